"""Eight processes, each with its own store, claim from one board at once, on SQLite and
PostgreSQL: no task is claimed twice, every task is claimed exactly once, and no task is
claimed before its requirements are done (their completions come first in history)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from corral.store import Store
from corral.tasks._model import TaskSpec, TaskStatus
from tests.store._processes import run_together, spawn

WORKER = Path(__file__).with_name("_task_worker.py")
PROCESSES = 8
TASKS = 300

pytestmark = pytest.mark.slow


async def test_processes_claim_every_task_exactly_once(
    store: Store, store_url: str, raw_sql: Any
) -> None:
    rng = random.Random(18)
    specs = []
    for i in range(TASKS):
        earlier = [f"t{j:03d}" for j in range(max(0, i - 20), i)]
        requires = tuple(rng.sample(earlier, min(len(earlier), rng.choice([0, 0, 1, 2]))))
        specs.append(
            TaskSpec(
                id=f"t{i:03d}",
                project=rng.choice(["p", "q"]),
                title=f"task {i}",
                priority=rng.randint(1, 10),
                requires=tuple(r for r in requires if r.endswith(("0", "2", "4", "6", "8"))),
            )
        )
    # requirements in the same project only: regroup the specs per project
    by_project = {project: {s.id for s in specs if s.project == project} for project in ("p", "q")}
    specs = [
        TaskSpec(
            id=s.id,
            project=s.project,
            title=s.title,
            priority=s.priority,
            requires=tuple(r for r in s.requires if r in by_project[s.project]),
        )
        for s in specs
    ]
    await store.add_tasks(specs)
    procs = [await spawn(WORKER, store_url, f"w{n}") for n in range(PROCESSES)]
    results = await run_together(procs)

    claims = [tuple(c) for r in results for c in r["claims"]]
    assert sum(r["refused"] for r in results) == 0
    assert len(claims) == TASKS, "a task was claimed twice, or never"
    assert {(p, i) for p, i, _ in claims} == {(s.project, s.id) for s in specs}
    assert {token for _, _, token in claims} == {1}
    assert sum(1 for r in results if r["claims"]) > 1, "only one process ever claimed"
    board = await store.list_tasks(limit=1000)
    assert {t.status for t in board} == {TaskStatus.DONE}
    # History order is commit order here: a claim that saw a requirement done was written
    # after that completion committed (timestamps are read before a transaction waits).
    seq = {
        (project, task_id, kind): int(n)
        for project, task_id, kind, n in raw_sql(
            store_url, "SELECT project, task_id, kind, seq FROM corral_task_events"
        )
    }
    for task in board:
        for other in task.spec.requires:
            assert seq[(task.project, other, "done")] < seq[(task.project, task.id, "claimed")]
