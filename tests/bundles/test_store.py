"""Bundles in the store (both dialects), and a scheduler following the current one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from corral.bundles import pack
from corral.errors import StoreConflict
from corral.scheduler.bundles import bundle_dir, load_bundle
from corral.scheduler.reload import summarize
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import NewItem, Store, TriggerKind, open_store
from tests.scheduler.helpers import wait_for, write_project


async def test_publish_list_show_and_move_the_head(tmp_path: Path, store: Store) -> None:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "echo v1"}})
    first = pack(root)
    assert await store.bundle_head() is None
    done = await store.publish_bundle(
        first.hash, first.data, first.manifest(), actor="cli:me@here", note="v1"
    )
    assert done.stored and done.moved and not done.unchanged
    assert done.bundle.agents == first.agents and done.bundle.size == first.size
    assert done.bundle.note == "v1" and done.bundle.created_by == "cli:me@here"
    assert await store.bundle_data(first.hash) == first.data

    again = await store.publish_bundle(first.hash, first.data, first.manifest(), actor="x")
    assert again.unchanged and again.bundle.note == "v1"  # the first push's record stays

    write_project(root, {"dev": {"command": "echo v2"}})
    second = pack(root)
    moved = await store.publish_bundle(second.hash, second.data, second.manifest(), actor="x")
    assert moved.stored and moved.moved
    assert [b.hash for b in await store.list_bundles()] == [second.hash, first.hash]

    # Pushing the old tree again (or applying it) is a rollback: nothing stored, head moved.
    back = await store.publish_bundle(first.hash, first.data, first.manifest(), actor="x")
    assert not back.stored and back.moved
    head = await store.set_bundle_head(second.hash, actor="token:ops")
    assert head.hash == second.hash and head.set_by == "token:ops"
    assert await store.find_bundles(second.hash[:15]) == [second.hash]
    with pytest.raises(StoreConflict, match="no bundle sha256:0000"):
        await store.set_bundle_head("sha256:" + "0" * 64, actor="x")
    with pytest.raises(ValueError, match="do not hash to it"):
        await store.publish_bundle(first.hash, b"other", first.manifest(), actor="x")
    actions = [e.action for e in await store.list_audit(limit=20)]
    assert actions.count("bundle.push") == 2 and actions.count("bundle.apply") == 4


async def test_a_scheduler_follows_the_head_and_runs_record_it(
    tmp_path: Path, store: Store
) -> None:
    root = tmp_path / "p"
    project = write_project(root, {"dev": {"command": "echo v1"}})
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await scheduler.start()
    assert scheduler.project.bundle is None

    write_project(root, {"dev": {"command": "echo v2"}, "qa": {"command": "echo qa"}})
    packed = pack(root)
    await store.publish_bundle(packed.hash, packed.data, packed.manifest(), actor="x")
    assert scheduler.bundles is not None and await scheduler.bundles.check()
    running = scheduler.project
    assert running.bundle == packed.hash and running.root == root.resolve()
    assert running.agents["dev"].dir == bundle_dir(root.resolve(), packed.hash) / "agents" / "dev"
    assert running.shared_dir == bundle_dir(root.resolve(), packed.hash) / "shared"
    assert scheduler.watcher is not None and scheduler.watcher.suspended
    # Loaded from the unpacked bundle, the store URL is still the project directory's: no
    # "takes effect at the next start" warning.
    loaded = await load_bundle(store, root.resolve(), packed.hash, None)
    assert loaded.state_url == project.state_url
    assert summarize(project, loaded).restart_needed == ()
    assert {a.agent for a in await store.agent_states() if a.present} == {"dev", "qa"}

    await store.enqueue(NewItem(agent="qa", trigger=TriggerKind.MANUAL))
    [claim] = await store.claim("t", lease_seconds=30, limit=1, bundle=running.bundle)
    assert claim.run.bundle == packed.hash
    assert (await store.get_run(claim.run.id)).bundle == packed.hash  # type: ignore[union-attr]


async def test_a_bad_bundle_never_replaces_the_running_project(
    tmp_path: Path, store: Store
) -> None:
    root = tmp_path / "p"
    project = write_project(root, {"dev": {"command": "echo v1"}})
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await scheduler.start()
    good = pack(root)
    await store.publish_bundle(good.hash, good.data, good.manifest(), actor="x")
    assert scheduler.bundles is not None and await scheduler.bundles.check()

    # Written to the store behind push's back: a config that does not load.
    (root / "agents" / "dev" / "config.toml").write_text("scale = [\n")
    bad = pack(root)
    await store.publish_bundle(bad.hash, bad.data, bad.manifest(), actor="x")
    assert not await scheduler.bundles.check()
    assert scheduler.project.bundle == good.hash
    assert scheduler.bundles.failed == bad.hash
    assert "agents/dev/config.toml" in (scheduler.bundles.error or "")
    assert not await scheduler.bundles.check()  # reported once, not retried every poll

    # The next push is tried.
    write_project(root, {"dev": {"command": "echo v3"}})
    fixed = pack(root)
    await store.publish_bundle(fixed.hash, fixed.data, fixed.manifest(), actor="x")
    await wait_for(scheduler.bundles.check)
    assert scheduler.project.bundle == fixed.hash and scheduler.bundles.error is None


async def test_a_starting_scheduler_runs_the_current_bundle(tmp_path: Path, store: Store) -> None:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "echo pushed"}})
    packed = pack(root)
    await store.publish_bundle(packed.hash, packed.data, packed.manifest(), actor="x")
    project = write_project(root, {"dev": {"command": "echo local"}, "extra": {"command": "x"}})
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await scheduler.start()
    assert scheduler.project.bundle == packed.hash
    assert set(scheduler.project.agents) == {"dev"}
    assert {a.agent for a in await store.agent_states() if a.present} == {"dev"}


async def test_control_planes_on_one_store_converge_on_the_head(
    tmp_path: Path, store_url: str, dialect: str
) -> None:
    """Two schedulers (each its own store connection and project directory) follow one
    push. On PostgreSQL the notice wakes them long before their poll (30 s here); SQLite
    has no notices, so they poll."""
    interval = 30.0 if dialect == "postgresql" else 0.2
    stores = [await open_store(store_url) for _ in range(3)]
    try:
        schedulers = []
        for n, opened in enumerate(stores[:2]):
            project = write_project(tmp_path / f"cp{n}", {"dev": {"command": "echo old"}})
            scheduler = Scheduler(project, opened, SchedulerOptions(poll_interval=0.05))
            await scheduler.start()
            assert scheduler.bundles is not None
            scheduler.bundles.interval = interval
            schedulers.append(scheduler)
        followers = [asyncio.create_task(s.bundles.run()) for s in schedulers]  # type: ignore[union-attr]
        await asyncio.sleep(0.5)  # listening
        source = tmp_path / "source"
        write_project(source, {"dev": {"command": "echo new"}, "qa": {"command": "echo qa"}})
        packed = pack(source)
        started = time.monotonic()
        await stores[2].publish_bundle(packed.hash, packed.data, packed.manifest(), actor="x")
        await wait_for(lambda: all(s.project.bundle == packed.hash for s in schedulers), 10)
        assert time.monotonic() - started < 5
        for scheduler in schedulers:
            assert set(scheduler.project.agents) == {"dev", "qa"}
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    finally:
        for opened in stores:
            await opened.close()
