"""A heartbeat's part in a fleet upgrade acts on copies (D130): the latest rollout as this
process last read or wrote it, and the runner list, each at most ``COPY_SECONDS`` old.
Another process's store object stands for another control plane process (or the CLI,
which writes the store directly). Both stores; the round trips on PostgreSQL's wire."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from corral.engine import fleet_upgrade
from corral.engine.fleet import FleetSettings
from corral.engine.token import hash_token
from corral.store import FleetRollout, Runner, Store, open_store

DAY = timedelta(days=1)
INDEX = "https://example.invalid/simple"
SETTINGS = FleetSettings()


async def _runners(store: Store, *names: str) -> list[Runner]:
    from corral.store import NewRunner

    joined = []
    for name in names:
        await store.create_fleet_token(hash_token(f"t-{name}"), ttl=DAY, actor="t")
        new = NewRunner(name=name, hostname=f"{name}.example", version="0.1.1")
        runner = await store.redeem_fleet_token(hash_token(f"t-{name}"), hash_token(name), new)
        assert isinstance(runner, Runner)
        joined.append(runner)
    return joined


async def _beat(store: Store, name: str, version: str = "") -> Runner:
    runner = await store.heartbeat_by_credential(hash_token(name), version=version)
    assert runner is not None
    return runner


async def _rollout(store: Store, *, watch_seconds: float = 3600.0) -> FleetRollout:
    return await store.create_fleet_rollout(
        target="0.1.2",
        channel="stable",
        canary=1,
        batch_share=0.5,
        watch_seconds=watch_seconds,
        source={"index": INDEX},
        detail={"steps": [], "runners": {}, "onWorse": "halt", "log": []},
        actor="test",
    )


async def test_the_copy_is_this_store_objects_writes_at_once_and_others_within_its_age(
    store: Store, store_url: str
) -> None:
    async with await open_store(store_url) as other:
        assert await store.latest_fleet_rollout(max_age=60) is None  # read: none yet
        made = await _rollout(other)
        assert await store.latest_fleet_rollout(max_age=60) is None  # its copy
        assert await store.latest_fleet_rollout() == made  # max_age 0 reads, and keeps it
        assert await store.latest_fleet_rollout(max_age=60) == made
        halted = await other.update_fleet_rollout(made, state="halted", detail={"by": "other"})
        assert halted is not None
        assert await store.latest_fleet_rollout(max_age=60) == made  # still the copy
        await asyncio.sleep(0.15)
        assert await store.latest_fleet_rollout(max_age=0.1) == halted  # aged: read again
        # its own write replaces the copy at once; a lost compare and set drops it
        mine = await store.update_fleet_rollout(halted, state="completed", detail={})
        assert mine is not None and await store.latest_fleet_rollout(max_age=60) == mine
        theirs = await other.update_fleet_rollout(mine, state="halted", detail={"x": 1})
        assert theirs is not None
        assert await store.update_fleet_rollout(mine, state="failed", detail={}) is None
        assert await store.latest_fleet_rollout(max_age=60) == theirs
        second = await store.create_fleet_rollout(
            target="0.1.3",
            channel="stable",
            canary=1,
            batch_share=0.5,
            watch_seconds=1,
            source={"index": INDEX},
            detail={},
            actor="test",
        )
        assert await store.latest_fleet_rollout(max_age=60) == second
        # a write to an older rollout, on a copy that aged, does not make it the latest
        halted_here = await store.update_fleet_rollout(second, state="halted", detail={})
        assert halted_here is not None
        await asyncio.sleep(0.15)
        newest = await _rollout(other)
        older = await store.update_fleet_rollout(halted_here, state="completed", detail={})
        assert older is not None
        assert await store.latest_fleet_rollout(max_age=0.1) == newest


async def test_orders_reach_the_runners_and_the_rollout_completes_on_copies(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_upgrade, "COPY_SECONDS", 60.0)  # (fixed while asserting it)
    await _runners(store, "r1", "r2")
    quiet = await fleet_upgrade.on_heartbeat(store, await _beat(store, "r1"), None, SETTINGS)
    assert quiet == (None, True)
    async with await open_store(store_url) as cli:  # `corral fleet upgrade`, elsewhere
        await fleet_upgrade.start_rollout(
            cli, target="0.1.2", index=INDEX, canary=1, batch_share=0.5, watch_seconds=0, actor="t"
        )
        # this process still holds "no rollout": the order comes one copy later
        early = await fleet_upgrade.on_heartbeat(store, await _beat(store, "r1"), None, SETTINGS)
        assert early == (None, True)
        monkeypatch.setattr(fleet_upgrade, "COPY_SECONDS", 0.2)
        await asyncio.sleep(0.25)
        versions = {"r1": "0.1.1", "r2": "0.1.1"}
        upgraded: list[str] = []
        for _ in range(12):  # each runner heartbeats in turn; an ordered one "upgrades"
            for name in ("r1", "r2"):
                runner = await _beat(store, name, versions[name])
                order, recorded = await fleet_upgrade.on_heartbeat(store, runner, None, SETTINGS)
                assert recorded
                if order is not None:
                    assert (order["version"], order["index"]) == ("0.1.2", INDEX)
                    versions[name] = "0.1.2"
                    upgraded.append(name)
        latest = await cli.latest_fleet_rollout()  # the other process reads what was recorded
    assert latest is not None and latest.state == "completed", latest
    assert sorted(upgraded) == ["r1", "r2"]
    assert [s["kind"] for s in latest.detail["steps"]] == ["canary", "batch"]
    verdicts = [s["verdict"] for s in latest.detail["steps"]]
    assert all(v is not None and not v["worse"] for v in verdicts), verdicts
    assert {r["state"] for r in latest.detail["runners"].values()} == {"upgraded"}


async def test_orders_stop_one_copy_after_another_process_halts(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_upgrade, "COPY_SECONDS", 60.0)
    await _runners(store, "r1")
    await fleet_upgrade.start_rollout(store, target="0.1.2", index=INDEX, actor="t")
    order, _ = await fleet_upgrade.on_heartbeat(store, await _beat(store, "r1"), None, SETTINGS)
    assert order is not None and order["version"] == "0.1.2"
    async with await open_store(store_url) as cli:
        await fleet_upgrade.halt_rollout(cli, actor="t")
    again = await fleet_upgrade.on_heartbeat(store, await _beat(store, "r1"), None, SETTINGS)
    assert again[0] is not None  # the copy, at most COPY_SECONDS old
    monkeypatch.setattr(fleet_upgrade, "COPY_SECONDS", 0.2)
    await asyncio.sleep(0.25)
    late = await fleet_upgrade.on_heartbeat(store, await _beat(store, "r1"), None, SETTINGS)
    assert late == (None, True)


async def test_a_change_decided_on_a_stale_copy_is_not_recorded(
    store: Store, store_url: str
) -> None:
    """The heartbeat's store holds a copy another process has moved on from: the failure
    report is recorded on the rollout as it is now (the other's change kept), never on
    the copy."""
    await _runners(store, "r1")
    await fleet_upgrade.start_rollout(store, target="0.1.2", index=INDEX, actor="t")
    runner = await _beat(store, "r1")
    assert (await fleet_upgrade.on_heartbeat(store, runner, None, SETTINGS))[0] is not None
    async with await open_store(store_url) as other:
        seen = await other.latest_fleet_rollout()
        assert seen is not None
        noted: dict[str, Any] = {**seen.detail, "log": [*seen.detail["log"], {"note": "other"}]}
        assert await other.update_fleet_rollout(seen, state="running", detail=noted) is not None
    report = {"state": "failed", "version": "0.1.2", "stage": "install", "error": "boom"}
    assert await fleet_upgrade.on_heartbeat(store, runner, report, SETTINGS) == (None, True)
    latest = await store.latest_fleet_rollout()
    assert latest is not None and latest.state == "failed"
    assert latest.detail["runners"][runner.id]["error"] == "boom"
    assert {"note": "other"} in latest.detail["log"]


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_heartbeats_read_the_rollout_and_the_runners_once_per_copy(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's wire: 20 heartbeats outside a rollout read it once (each read it
    before), and 20 during a rollout's open step read it and the runner list once (each
    read both before); 30 arriving together once the copies aged read each once too
    (they wait for the first one's reads)."""
    from tests.store._roundtrips import counted_store

    monkeypatch.setattr(fleet_upgrade, "COPY_SECONDS", 60.0)
    async with counted_store(store_url) as (store, proxy):
        await _runners(store, "r1", "r2")
        runner = await _beat(store, "r1")
        with proxy.counting() as seen:
            for _ in range(20):
                assert await fleet_upgrade.on_heartbeat(store, runner, None, SETTINGS) == (
                    None,
                    True,
                )
        assert len(_reads(seen.queries)) <= 1, seen.queries
        await _rollout(store)
        await fleet_upgrade.on_heartbeat(store, runner, None, SETTINGS)  # opens the canary
        with proxy.counting() as seen:
            for _ in range(20):
                await fleet_upgrade.on_heartbeat(store, runner, None, SETTINGS)
        assert len(_reads(seen.queries)) <= 2, seen.queries
        monkeypatch.setattr(fleet_upgrade, "COPY_SECONDS", 0.1)
        await asyncio.sleep(0.15)
        with proxy.counting() as seen:
            await asyncio.gather(
                *(fleet_upgrade.on_heartbeat(store, runner, None, SETTINGS) for _ in range(30))
            )
        assert len(_reads(seen.queries)) == 2, seen.queries


def _reads(queries: list[str]) -> list[str]:
    return [q for q in queries if q not in ("BEGIN", "COMMIT", "ROLLBACK")]
