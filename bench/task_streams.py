"""What task streaming costs the store: one tick of a ``[[tasks]]`` trigger.

A board of ``--tasks`` tasks (a tenth of them matching the trigger's label, a fifth of
those waiting on a requirement), one agent of scale ``--scale``:

* **idle tick**: nothing due (the agent's runs cover the claimable tasks): the read
  transaction alone. Every scheduler runs one per trigger per second, and on wake-ups.
* **queueing tick**: runs are due: the read, then the write transaction that locks the
  agent's row, counts again and queues one item.

Medians over ``--ticks`` ticks each, both stores.

    .venv/bin/python bench/task_streams.py [--tasks 1000] [--ticks 200] [--scale 4]
        [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import Result, fresh_store, median, percentile, print_table

from corral.store import AgentSpec, RunState, open_store
from corral.tasks._model import TaskSpec


async def _measure(url: str, tasks: int, ticks: int, scale: int) -> dict[str, float]:
    async with await open_store(url) as store:
        specs = [AgentSpec("dev", scale=scale, queue_size=100_000)]
        await store.sync_project(specs, scale_cap=None, max_attempts=3, max_reruns=10)
        board = []
        for n in range(tasks):
            labels = ("api",) if n % 10 == 0 else ("ui",)
            requires = (f"T-{n - 10}",) if n % 50 == 0 and n >= 10 else ()
            board.append(TaskSpec(id=f"T-{n}", project="web", title="t", labels=labels,
                                  requires=requires))  # fmt: skip
        for start in range(0, tasks, 500):
            await store.add_tasks(board[start : start + 500])

        async def tick() -> int:
            done = await store.stream_tasks("dev", 0, project="web", labels=["api"], scale=scale)
            return len(done.queued)

        assert await tick() == scale  # the first tick fills the scale
        idle = []
        for _ in range(ticks):
            began = time.perf_counter()
            assert await tick() == 0
            idle.append(time.perf_counter() - began)
        queueing = []
        for _ in range(ticks):
            # One run ends having done a task: its slot is due again.
            (claim,) = await store.claim("bench", lease_seconds=600, limit=1)
            task = await store.claim_task(claimer="dev", run_id=claim.run.id, project="web",
                                          labels=["api"])  # fmt: skip
            assert task is not None
            await store.finish_task("web", task.id, task.token, "done")
            await store.finalize(claim.run.id, fence=claim.run.fence or 0,
                                 state=RunState.SUCCEEDED, exit_code=0)  # fmt: skip
            began = time.perf_counter()
            assert await tick() == 1
            queueing.append(time.perf_counter() - began)
            if len(queueing) >= min(ticks, tasks // 10 - scale - 5):
                break  # the matching tasks run out
    return {
        "idle_tick_ms": median(idle) * 1000,
        "idle_tick_p99_ms": percentile(idle, 99) * 1000,
        "queueing_tick_ms": median(queueing) * 1000,
        "queueing_ticks": float(len(queueing)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    result = Result("task_streams", vars(args))
    rows = []
    for dialect in args.stores.split(","):
        async with fresh_store(dialect) as url:
            figures = await _measure(url, args.tasks, args.ticks, args.scale)
        result.figures[dialect] = figures
        rows.append([dialect, *(round(v, 3) for v in figures.values())])
    print_table(
        "task streams",
        ["store", "idle tick ms", "idle p99 ms", "queueing tick ms", "queueing ticks"],
        rows,
    )
    result.write()


if __name__ == "__main__":
    asyncio.run(main())
