"""Cron triggers: the next tick, exactly-once ticks across schedulers, late ticks."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from corral.scheduler.cron import CronTriggers, next_tick, tick_key
from corral.scheduler.service import agent_specs
from corral.store import ItemState, NewItem, QueueItem, Store, TriggerKind, open_store
from tests.scheduler.helpers import wait_for, write_project
from tests.scheduler.procs import SchedulerProcess, wait_until


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
    utc = tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    assert tick_key("dev", tick) == f"schedule:dev:{utc}+00:00"


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


def test_tick_keys_are_utc_whatever_the_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # this process's zone: not UTC
    time.tzset()
    try:
        instant = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
        zones = (UTC, ZoneInfo("Asia/Kolkata"), ZoneInfo("America/New_York"))
        keys = {tick_key("dev", instant.astimezone(zone)) for zone in zones}
        keys.add(tick_key("dev", instant.astimezone()))
        assert keys == {"schedule:dev:2026-03-01T10:15+00:00"}
    finally:
        monkeypatch.undo()
        time.tzset()


async def test_a_tick_keyed_the_old_way_is_not_queued_again(tmp_path: Path, store: Store) -> None:
    """An older scheduler keyed a tick by its own local time; a newer one sees it is the
    same tick (a store shared during a rolling upgrade)."""
    project = write_project(tmp_path / "p", {"dev": {"schedule": "*/5 * * * *", "command": "true"}})
    await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=10)
    tick = next_tick("*/5 * * * *", datetime.now(UTC))
    for zone in ("Asia/Kolkata", "America/St_Johns", "Pacific/Kiritimati"):
        old_key = f"schedule:dev:{tick.astimezone(ZoneInfo(zone)).isoformat(timespec='minutes')}"
        old = await store.enqueue(
            NewItem(agent="dev", trigger=TriggerKind.SCHEDULE, dedupe_key=old_key)
        )
        result = await CronTriggers(project, store.enqueue).fire("dev", tick, tick)
        assert result is not None and result.duplicate and result.item.id == old.item.id
        await store.claim("test", lease_seconds=30, limit=1)  # settle it: the next is new
        tick = next_tick("*/5 * * * *", tick)
    assert len(await store.list_items()) == 3


def _schedule_items(url: str) -> list[QueueItem]:
    async def go() -> list[QueueItem]:
        async with await open_store(url) as store:
            items = await store.list_items(limit=10_000)
        return [item for item in items if item.trigger is TriggerKind.SCHEDULE]

    return asyncio.run(go())


def _live_schedulers(url: str) -> int:
    async def go() -> int:
        async with await open_store(url) as store:
            return len(await store.list_schedulers(live_only=True))

    return asyncio.run(go())


@pytest.mark.slow
def test_schedulers_in_two_time_zones_queue_each_tick_once(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "p"
    write_project(root, {"dev": {"schedule": "* * * * *", "command": "true"}})
    monkeypatch.setenv("TZ", "UTC")
    first = SchedulerProcess(root, store_url, tmp_path / "utc.log")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    second = SchedulerProcess(root, store_url, tmp_path / "kolkata.log")
    with first, second:
        wait_until(lambda: _live_schedulers(store_url) == 2, 30)
        started = datetime.now(UTC)
        boundary = started.replace(second=0, microsecond=0) + timedelta(minutes=1)
        # both loops are up: wait for the next minute's tick, and a little longer
        time.sleep((boundary - datetime.now(UTC)).total_seconds() + 8)
        items = _schedule_items(store_url)
        assert first.stop() == 0 and second.stop() == 0
    ticks = [item for item in items if item.enqueued_at >= boundary]
    assert len(ticks) == 1, [item.dedupe_key for item in items]
    assert ticks[0].dedupe_key == f"schedule:dev:{boundary.isoformat(timespec='minutes')}"
