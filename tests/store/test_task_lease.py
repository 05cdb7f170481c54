"""A claim's lease on both stores: a heartbeat without a lease extends the claim by the
lease it was taken with, and the stalled release takes back only the claims whose own
lease lapsed."""

from __future__ import annotations

import asyncio

from corral.store import Store
from corral.tasks._model import Task, TaskSpec, TaskStatus


def span(task: Task) -> float:
    assert task.expires_at is not None and task.heartbeat_at is not None
    return round(task.expires_at - task.heartbeat_at, 3)


async def test_heartbeat_keeps_the_claims_own_lease(store: Store) -> None:
    await store.add_tasks([TaskSpec(id=t, project="p", title=t) for t in ("a", "b")])
    a = await store.claim_task(claimer="x", project="p", lease=45)
    b = await store.claim_task(claimer="x", project="p")
    assert a is not None and b is not None
    assert span(await store.heartbeat_task("p", a.id, a.token)) == 45.0
    assert span(await store.heartbeat_task("p", b.id, b.token)) == 600.0
    # An explicit lease replaces it, and later heartbeats keep the new one.
    assert span(await store.heartbeat_task("p", a.id, a.token, lease=90)) == 90.0
    assert span(await store.heartbeat_task("p", a.id, a.token)) == 90.0


async def test_stalled_release_honours_each_claims_lease(store: Store) -> None:
    await store.add_tasks([TaskSpec(id=t, project="p", title=t) for t in ("short", "long")])
    short = await store.claim_task(claimer="x", project="p", lease=0.3)
    long = await store.claim_task(claimer="x", project="p", lease=30)
    assert short is not None and long is not None
    assert await store.release_stalled_tasks() == []
    await asyncio.sleep(0.5)
    assert [t.id for t in await store.release_stalled_tasks()] == [short.id]
    kept = await store.get_task("p", long.id)
    assert kept is not None and kept.status is TaskStatus.CLAIMED
