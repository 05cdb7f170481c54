"""A waiter listens before it looks (D107): a lock released, or a call answered, while the
gateway asks the store for it wakes the wait at once instead of leaving it to the poll.

The store call of the wait is wrapped so that the change lands exactly in that window:
right after the store answered "still held" / "still running", before the gateway waits.
The poll is made 5 s long, so a missed notice shows as a wait of 5 s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.gateway.agent_api import _handlers
from corral.gateway.app import create_agent_app
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.service import sync_config
from corral.store import Call, LockHeld, NewRun, RunState, Store, TriggerKind
from corral.store._notify import call_topic, lock_topic
from tests.gateway.test_lock_auth import _post
from tests.scheduler.helpers import write_project

#: The poll of the waits under test: what a missed notice costs.
SLOW_POLL = 5.0
#: What a woken wait must beat.
PROMPT = 1.0


@pytest.fixture(autouse=True)
def slow_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_handlers, "POLL_SECONDS", SLOW_POLL)


async def _notices_delivered(store: Store, heard: asyncio.Future[bool]) -> None:
    """Wait until the change's notice reached this process: the in-process one (``heard``,
    listening since before the change) and, on PostgreSQL, the trigger's, which comes
    through the listener a moment later."""
    assert await heard, "the change sent no notice"
    if store.dialect == "postgresql":
        await asyncio.sleep(0.3)


async def test_a_release_while_the_waiter_looks_wakes_it_at_once(
    tmp_path: Path, store: Store
) -> None:
    project = write_project(tmp_path / "p", {"dev": {"command": "true"}})
    link = AgentLink("http://127.0.0.1:1", changes=store.changes)
    app = create_agent_app(project, store, link)
    holder = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    waiter = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    holder_secret, _ = link.issue(holder.id, "dev", "manual")
    waiter_secret, _ = link.issue(waiter.id, "dev", "manual")
    key = {"key": "db://window"}
    assert (await _post(app, "/agent/locks/acquire", holder_secret, key))[0] == 200

    loop = asyncio.get_running_loop()
    released_at: float | None = None
    looked = store.wait_for_lock

    async def released_while_looking(lock_key: str, run_id: str, **options: Any) -> Any:
        nonlocal released_at
        result = await looked(lock_key, run_id, **options)
        if isinstance(result, LockHeld) and released_at is None:
            heard = asyncio.ensure_future(store.changes.wait([lock_topic(lock_key)], 5.0))
            await asyncio.sleep(0)
            assert (await _post(app, "/agent/locks/release", holder_secret, key))[0] == 200
            await _notices_delivered(store, heard)
            released_at = loop.time()
        return result

    store.wait_for_lock = released_while_looking  # type: ignore[method-assign]
    status, got = await asyncio.wait_for(
        _post(app, "/agent/locks/acquire", waiter_secret, {**key, "wait": True, "timeout": 20}),
        30,
    )
    assert status == 200 and got["ok"] is True, got
    assert released_at is not None, "the key was never released in the window"
    waited = loop.time() - released_at
    assert waited < PROMPT, f"the waiter slept {waited:.2f} s after the release (the poll)"
    lock = await store.get_lock("db://window")
    assert lock is not None and lock.run_id == waiter.id


async def test_an_answer_while_the_caller_looks_wakes_its_wait_at_once(
    tmp_path: Path, store: Store
) -> None:
    project = write_project(
        tmp_path / "p", {"dev": {"command": "true"}, "helper": {"command": "true"}}
    )
    await sync_config(store, project)
    link = AgentLink("http://127.0.0.1:1", changes=store.changes)
    app = create_agent_app(project, store, link)
    caller = await store.create_run(NewRun(agent="dev", trigger=TriggerKind.MANUAL))
    caller_secret, _ = link.issue(caller.id, "dev", "manual")
    status, made = await _post(
        app, "/agent/calls", caller_secret, {"agent": "helper", "context": "look"}
    )
    assert status == 200, made
    call_id = str(made["callId"])
    [callee] = await store.claim("s1", lease_seconds=60, limit=1)
    assert callee.run.fence is not None

    loop = asyncio.get_running_loop()
    answered_at: float | None = None
    looked = store.get_call

    async def answered_while_looking(found_id: str, **options: Any) -> Call | None:
        nonlocal answered_at
        call = await looked(found_id, **options)
        if call is not None and not call.state.is_final and answered_at is None:
            heard = asyncio.ensure_future(store.changes.wait([call_topic(found_id)], 5.0))
            await asyncio.sleep(0)
            await store.finalize(
                callee.run.id, fence=callee.run.fence, state=RunState.SUCCEEDED, exit_code=0
            )
            await _notices_delivered(store, heard)
            answered_at = loop.time()
        return call

    store.get_call = answered_while_looking  # type: ignore[method-assign]
    status, states = await asyncio.wait_for(
        _post(app, "/agent/calls/wait", caller_secret, {"callIds": [call_id], "timeout": 20}),
        30,
    )
    assert status == 200, states
    assert states[call_id]["status"] == "completed", states
    assert answered_at is not None, "the call was never answered in the window"
    waited = loop.time() - answered_at
    assert waited < PROMPT, f"the caller slept {waited:.2f} s after the answer (the poll)"
