"""Cron triggers: the next tick, exactly-once ticks across schedulers, late ticks."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

from corral.scheduler.cron import CronTriggers, next_tick, tick_key
from corral.scheduler.service import agent_specs
from corral.store import ItemState, Store, TriggerKind
from tests.scheduler.helpers import wait_for, write_project


def local(*args: int) -> datetime:
    return datetime(*args).astimezone()  # type: ignore[misc]


def test_next_tick_in_the_host_time_zone() -> None:
    assert next_tick("*/15 * * * *", local(2026, 3, 1, 10, 7)) == local(2026, 3, 1, 10, 15)
    assert next_tick("0 9 * * 1", local(2026, 3, 1, 10, 7)) == local(2026, 3, 2, 9, 0)  # a Monday
    assert next_tick("* * * * *", local(2026, 3, 1, 10, 7)) == local(2026, 3, 1, 10, 8)


def test_tick_keys_name_agent_and_minute() -> None:
    tick = local(2026, 3, 1, 10, 15)
    assert tick_key("dev", tick) == tick_key("dev", tick + timedelta(seconds=0))
    assert tick_key("dev", tick) != tick_key("dev", tick + timedelta(minutes=1))
    assert tick_key("dev", tick).startswith("schedule:dev:2026-03-01T10:15")


async def test_a_tick_seen_by_two_schedulers_is_queued_once(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"dev": {"schedule": "*/5 * * * *", "command": "true"}})
    await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=10)
    first, second = CronTriggers(project, store.enqueue), CronTriggers(project, store.enqueue)
    tick = next_tick("*/5 * * * *", datetime.now().astimezone())
    a = await first.fire("dev", tick, tick)
    b = await second.fire("dev", tick, tick + timedelta(seconds=1))
    assert a is not None and b is not None
    assert (a.duplicate, b.duplicate) == (False, True)
    assert a.item.id == b.item.id
    [item] = await store.list_items()
    assert (item.trigger, item.state) == (TriggerKind.SCHEDULE, ItemState.QUEUED)


async def test_a_late_tick_is_skipped_not_run_late(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"dev": {"schedule": "* * * * *", "command": "true"}})
    await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=10)
    triggers = CronTriggers(project, store.enqueue)
    tick = local(2026, 3, 1, 10, 0)
    assert await triggers.fire("dev", tick, tick + timedelta(minutes=6)) is None
    assert await store.list_items() == []


async def test_the_loop_fires_when_a_tick_comes(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "p",
        {
            "every": {"schedule": "* * * * *", "command": "true"},
            "off": {"schedule": "* * * * *", "scale": 0, "command": "true"},
            "none": {"command": "true"},
        },
    )
    await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=10)
    boundary = next_tick("* * * * *", datetime.now().astimezone())
    base, began = boundary - timedelta(seconds=0.3), time.monotonic()
    triggers = CronTriggers(
        project, store.enqueue, clock=lambda: base + timedelta(seconds=time.monotonic() - began)
    )
    assert triggers.schedules == {"every": "* * * * *"}  # disabled and unscheduled agents: none
    task = asyncio.create_task(triggers.run())
    try:
        await wait_for(lambda: store.list_items(), timeout=5)
    finally:
        task.cancel()
    [item] = await store.list_items()
    assert item.agent == "every" and item.dedupe_key == tick_key("every", boundary)
