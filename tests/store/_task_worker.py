"""A task-claiming store client run as a separate process by test_tasks_processes.py.

    python _task_worker.py URL NAME

Opens its own store, prints "ready", waits for "go" on stdin, then claims tasks one after
another, completing each at once, until no task is open or claimed. Prints one JSON line:
every claim as (project, id, token) and how many completions were refused.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from corral.store import open_store
from corral.tasks._model import StaleClaim, TaskStatus


async def main(url: str, name: str) -> None:
    async with await open_store(url, migrate=False) as store:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected go")
        claims: list[list[object]] = []
        refused = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            task = await store.claim_task(claimer=name, run_id=f"run-{name}", lease=60)
            if task is None:
                busy = await store.list_tasks(status=TaskStatus.OPEN, limit=1)
                busy += await store.list_tasks(status=TaskStatus.CLAIMED, limit=1)
                if not busy:
                    break
                await asyncio.sleep(random.uniform(0.001, 0.005))
                continue
            claims.append([task.project, task.id, task.token])
            try:
                await store.finish_task(task.project, task.id, task.token, TaskStatus.DONE, name)
            except StaleClaim:
                refused += 1
        print(json.dumps({"claims": claims, "refused": refused}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
