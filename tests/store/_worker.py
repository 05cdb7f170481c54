"""A store client run as a separate process by test_concurrency.py.

    python _worker.py churn   URL COUNT    create, start and finish COUNT runs, then try each again
    python _worker.py finish  URL RUN_ID   try to finish one run
    python _worker.py migrate URL          open_store + migrate() on a fresh database

It prints "ready", waits for "go" on stdin (so all workers start together), then prints
one JSON line with what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from corral.errors import StoreError
from corral.store import NewRun, RunState, Store, TriggerKind, open_store


def wait_for_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected go")


async def churn(store: Store, count: int) -> dict[str, Any]:
    ids, refused = [], 0
    for _ in range(count):
        run = await store.create_run(NewRun(agent=f"w{os.getpid()}", trigger=TriggerKind.SCHEDULE))
        await store.mark_run_running(run.id, pid=os.getpid(), host="test")
        await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=0)
        ids.append(run.id)
    for run_id in ids:
        try:
            await store.finish_run(run_id, state=RunState.FAILED, exit_code=1)
        except StoreError:
            refused += 1
    return {"ids": ids, "refused": refused}


async def finish(store: Store, run_id: str) -> dict[str, Any]:
    try:
        await store.finish_run(run_id, state=RunState.KILLED, exit_code=os.getpid())
    except StoreError as exc:
        return {"won": False, "error": str(exc), "pid": os.getpid()}
    return {"won": True, "pid": os.getpid()}


async def main(mode: str, url: str, arg: str | None) -> dict[str, Any]:
    if mode == "migrate":
        wait_for_go()
        async with await open_store(url, migrate=False) as store:
            applied = await store.migrate()  # what open_store(migrate=True) does, reported
            status = await store.migration_status()
        return {"applied": applied, "current": status.current}
    async with await open_store(url, migrate=False) as store:
        wait_for_go()
        if mode == "churn":
            return await churn(store, int(arg or 0))
        return await finish(store, str(arg))


if __name__ == "__main__":
    mode, url, *rest = sys.argv[1:]
    print(json.dumps(asyncio.run(main(mode, url, rest[0] if rest else None))), flush=True)
