"""The bundle follower is woken by every run's end (the store's hub wakes every waiter
then), and still reads the bundle head only a few times a second; a push is applied."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from corral.bundles import pack
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import Store
from tests.scheduler.helpers import wait_for, write_project


async def test_run_ends_do_not_each_read_the_bundle_head(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "cp", {"dev": {"command": "echo old"}})
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await scheduler.start()
    follower = scheduler.bundles
    assert follower is not None
    follower.interval = 30.0
    task = asyncio.create_task(follower.run())
    try:
        await asyncio.sleep(0.3)
        before = follower.checks
        began = time.monotonic()
        for _ in range(200):  # 200 runs ending within a second, as a burst does
            store.changes.notify_all()
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - began
        looks = follower.checks - before
        assert 1 <= looks <= elapsed / follower.settle + 2, looks

        source = tmp_path / "source"
        write_project(source, {"dev": {"command": "echo new"}, "qa": {"command": "echo qa"}})
        packed = pack(source)
        await store.publish_bundle(packed.hash, packed.data, packed.manifest(), actor="x")
        started = time.monotonic()
        await wait_for(lambda: scheduler.project.bundle == packed.hash, 10)
        assert time.monotonic() - started < 2  # the notice, not the 30 s poll
        assert set(scheduler.project.agents) == {"dev", "qa"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
