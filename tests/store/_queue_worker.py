"""A scheduler-like store client run as a separate process by test_queue_processes.py.

    python _queue_worker.py schedule URL SLOTS   claim (up to SLOTS at once), run briefly
                                                 and finalize until nothing is queued
    python _queue_worker.py hold     URL COUNT   claim COUNT items, report them, then hang
                                                 (the test kills it with SIGKILL)
    python _queue_worker.py intake   URL COUNT   enqueue COUNT items of agent a with the
                                                 dedupe keys race-0 … race-(COUNT-1)

CORRAL_TEST_LEASE (seconds, default 30) sets the lease of every claim.

It prints "ready", waits for "go" on stdin (so all workers start together), then prints
one JSON line with what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sys
from typing import Any

from corral.store import Claim, NewItem, RunState, StaleFence, Store, TriggerKind, open_store

LEASE_SECONDS = float(os.environ.get("CORRAL_TEST_LEASE", "30"))


def wait_for_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected go")


async def work(store: Store, claim: Claim, done: list[dict[str, Any]]) -> None:
    run = claim.run
    await store.mark_run_running(run.id, pid=os.getpid(), host=socket.gethostname())
    await asyncio.sleep(random.uniform(0.001, 0.005))
    try:
        await store.finalize(run.id, fence=run.fence or 0, state=RunState.SUCCEEDED, exit_code=0)
    except StaleFence:
        done.append({"item": claim.item.id, "stale": True})
        return
    done.append({"item": claim.item.id, "attempt": run.attempt, "fence": run.fence})


async def schedule(store: Store, owner: str, slots: int) -> dict[str, Any]:
    running: set[asyncio.Task[None]] = set()
    done: list[dict[str, Any]] = []
    while True:
        free = slots - len(running)
        claims = await store.claim(owner, lease_seconds=LEASE_SECONDS, limit=free) if free else []
        for claim in claims:
            task = asyncio.create_task(work(store, claim, done))
            running.add(task)
            task.add_done_callback(running.discard)
        if claims:
            continue
        if not running and not any(state.queued for state in await store.agent_states()):
            return {"owner": owner, "done": done}
        await asyncio.sleep(0.002)


async def hold(store: Store, owner: str, count: int) -> dict[str, Any]:
    held: list[Claim] = []
    while len(held) < count:
        held += await store.claim(owner, lease_seconds=LEASE_SECONDS, limit=count - len(held))
        await asyncio.sleep(0.01)
    return {"owner": owner, "held": [claim.item.id for claim in held]}


async def intake(store: Store, count: int) -> dict[str, Any]:
    """Enqueue ``count`` keyed items; another process races with the same keys."""
    answers = []
    for n in range(count):
        new = NewItem(agent="a", trigger=TriggerKind.WEBHOOK, dedupe_key=f"race-{n}")
        result = await store.enqueue(new)
        answers.append({"key": n, "item": result.item.id, "duplicate": result.duplicate})
    return {"answers": answers}


async def main(mode: str, url: str, arg: int) -> None:
    async with await open_store(url, migrate=False) as store:
        info = await store.register_scheduler(host="test", pid=os.getpid(), gateway_url=None)
        wait_for_go()
        if mode == "schedule":
            print(json.dumps(await schedule(store, info.id, arg)), flush=True)
            return
        if mode == "intake":
            print(json.dumps(await intake(store, arg)), flush=True)
            return
        print(json.dumps(await hold(store, info.id, arg)), flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    mode, url, arg = sys.argv[1:]
    asyncio.run(main(mode, url, int(arg)))
