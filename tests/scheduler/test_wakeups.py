"""Wake-ups across processes on PostgreSQL (LISTEN/NOTIFY, store/_notify.py).

A scheduler with its gateway runs in a child process (``_wakeup_node.py``) whose dispatch
poll and waiting-request poll are 5 s; this test's process changes the store. Whatever
the child does within 1 s of a change, it did because a notice woke it: without them
the 20 claims below would wait 2.5 s on average for the next poll.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from corral.store import Call, NewItem, NewRun, RunState, Store, TriggerKind
from tests.scheduler.helpers import wait_for, write_project

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("dialect", ["postgresql"], indirect=True),
]

NODE = Path(__file__).with_name("_wakeup_node.py")
#: The child's polls: far longer than any wake-up the tests accept.
SLOW_POLL = 5.0
#: What a woken child must beat.
PROMPT = 1.0


class Node:
    """The child scheduler: its gateway URL and the claims it reports."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.claims: dict[int, int] = {}  # item id -> claimed at (ns)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            claim: dict[str, Any] = json.loads(line)
            self.claims[int(claim["item"])] = int(claim["claimed_ns"])


@asynccontextmanager
async def slow_polling_node(root: Path, store_url: str) -> AsyncIterator[Node]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(root.parent / "home")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(NODE),
        str(root),
        store_url,
        str(SLOW_POLL),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(b"ready "), line
        node = Node(proc, line.split()[1].decode())
        yield node
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_item_queued_elsewhere_is_claimed_at_once(
    tmp_path: Path, store: Store, store_url: str
) -> None:
    root = tmp_path / "p"
    write_project(root, {"worker": {"scale": 4, "command": "true"}})
    async with slow_polling_node(root, store_url) as node:
        await asyncio.sleep(0.5)  # past the node's first claim
        delays = []
        for _ in range(20):
            item = (await store.enqueue(NewItem("worker", TriggerKind.WEBHOOK))).item
            committed = time.time_ns()
            await wait_for(partial(operator.contains, node.claims, item.id), SLOW_POLL * 2)
            delays.append((node.claims[item.id] - committed) / 1e9)
            await asyncio.sleep(0.05)
    assert max(delays) < PROMPT, delays
    assert statistics.median(delays) < 0.1, delays


async def test_a_lock_released_elsewhere_wakes_a_waiting_rlock(
    tmp_path: Path, store: Store, store_url: str
) -> None:
    root = tmp_path / "p"
    got = tmp_path / "got"
    command = (
        f"rlock github://acme/app/issues/7 --wait --timeout 60 > {tmp_path}/answer; "
        f"python3 -c 'import time; print(time.time_ns())' > {got}"
    )
    write_project(root, {"waiter": {"command": command}, "holder": {"command": "true"}})
    async with slow_polling_node(root, store_url) as node:
        holder = await store.create_run(NewRun("holder", TriggerKind.MANUAL))
        await store.acquire_lock("github://acme/app/issues/7", holder.id, ttl_seconds=600)
        await store.enqueue(NewItem("waiter", TriggerKind.MANUAL))
        await wait_for(lambda: _waiting(store, "github://acme/app/issues/7"), timeout=30)
        await asyncio.sleep(0.2)  # the request is in its (5 s) wait
        assert await store.release_lock("github://acme/app/issues/7", holder.id)
        released = time.time_ns()
        await wait_for(got.exists, timeout=SLOW_POLL * 2)
        await wait_for(lambda: got.read_text().strip() != "", timeout=5)
        assert node.url
    answer = json.loads((tmp_path / "answer").read_text())
    assert answer["ok"] is True, answer
    woke = (int(got.read_text()) - released) / 1e9
    assert woke < PROMPT, woke


async def _waiting(store: Store, key: str) -> bool:
    return any(w.key == key for w in await store.list_lock_waiters())


async def test_a_call_answered_elsewhere_wakes_al_subagent_wait(
    tmp_path: Path, store: Store, store_url: str
) -> None:
    root = tmp_path / "p"
    got = tmp_path / "got"
    command = (
        "id=$(echo context | al-subagent helper | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"callId\"])'); "
        f"al-subagent-wait $id --timeout 60 > {tmp_path}/answer; "
        f"python3 -c 'import time; print(time.time_ns())' > {got}"
    )
    write_project(root, {"caller": {"command": command}, "helper": {"command": "true"}})
    async with slow_polling_node(root, store_url) as node:
        # The helper is paused, so the node does not run it: this process answers.
        await store.set_paused("helper", True)
        await store.enqueue(NewItem("caller", TriggerKind.MANUAL))
        calls = await _waited_calls(store)
        [call] = calls
        assert call.item_id is not None
        # Kept for this process, so that the node (woken by the resume) leaves it alone.
        assert await store.reserve(call.item_id, "this-test", seconds=60) is not None
        await asyncio.sleep(0.2)  # the request is in its (5 s) wait
        await store.set_paused("helper", False)
        claims = await store.claim("this-test", lease_seconds=60, limit=1, item_id=call.item_id)
        [claim] = claims
        assert claim.item.agent == "helper" and claim.item.id == call.item_id
        await store.set_return_value(claim.run.id, "the answer")
        fence = claim.run.fence
        assert fence is not None
        await store.finalize(claim.run.id, fence=fence, state=RunState.SUCCEEDED, exit_code=0)
        answered = time.time_ns()
        await wait_for(got.exists, timeout=SLOW_POLL * 2)
        await wait_for(lambda: got.read_text().strip() != "", timeout=5)
        assert call.item_id not in node.claims
    answer = json.loads((tmp_path / "answer").read_text())
    assert answer[call.id]["status"] == "completed", answer
    woke = (int(got.read_text()) - answered) / 1e9
    assert woke < PROMPT, woke


async def _waited_calls(store: Store) -> list[Call]:
    """The call whose caller waits in al-subagent-wait (once there is one)."""
    found: list[Call] = []

    async def waiting() -> bool:
        found[:] = [c for c in await store.list_calls() if c.waiting_since is not None]
        return bool(found)

    await wait_for(waiting, timeout=30)
    return found
