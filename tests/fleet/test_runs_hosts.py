"""Runs on a runner in a simulated host (its own network namespace, reaching the control
plane at ``host.peer``), on both stores: a partitioned runner fences itself off (its
run's processes are gone before the run's lease can lapse on the control plane); a
frozen runner that thaws learns its run is gone, kills it, and its late report is
refused."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.store import QueueItem, Run, RunState, open_store
from tests.fleet.fleetkit import (
    control_plane,
    join_runner,
    run_processes,
    start_runner,
    wait_for,
)
from tests.fleet.test_runs import PROJECT
from tests.hosts import hosts
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow


def _project(root: Path, marker: str) -> None:
    write_project(
        root,
        {
            "remote": {
                "command": ["/bin/sh", "-c", f'echo "start $CORRAL_RUN_ID"; sleep 60 # {marker}'],
                "runsOn": ["edge"],
            }
        },
        PROJECT,
    )


def _read(store_url: str) -> tuple[list[Run], list[QueueItem]]:
    async def read() -> tuple[list[Run], list[QueueItem]]:
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=50), await store.list_items(limit=50)

    return asyncio.run(read())


def _started(store_url: str) -> Run | None:
    runs = [r for r in _read(store_url)[0] if r.started_at is not None]
    return runs[-1] if runs else None


def test_a_partitioned_runner_fences_itself_off(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    marker = "fleetmark-cut"
    _project(root, marker)
    with (
        hosts("edge") as made,
        control_plane(root, store_url, tmp_path / "start.log", "--expose") as plane,
    ):
        host = made["edge"]
        plane.push()
        url = f"http://{host.peer}:{plane.port}"
        runner = start_runner(join_runner(plane, tmp_path, "e1", ["edge"], 1, host=host, url=url))
        try:
            plane.trigger("remote")
            run = wait_for(lambda: _started(store_url), 90)
            wait_for(lambda: run_processes(marker), 30)
            assert run.runner_id == runner.runner_id and "(runner e1)" in (run.host or "")
            host.cut()
            cut_at = time.monotonic()
            wait_for(lambda: not run_processes(marker), 20, interval=0.05)
            gone_at, gone_wall = time.monotonic(), datetime.now(UTC)
            [item] = [i for i in _read(store_url)[1] if i.id == run.item_id]
            # gone before its lease lapses (the lease is not renewed while cut off)
            assert item.lease_expires_at is not None and gone_wall < item.lease_expires_at, (
                gone_wall,
                item.lease_expires_at,
            )
            assert gone_at - cut_at < 12

            def lost() -> bool:
                [now] = [r for r in _read(store_url)[0] if r.id == run.id]
                return now.state is RunState.LOST

            wait_for(lost, 30)
            host.mend()
            # back: the runner asks for work again and runs the item once more
            wait_for(lambda: len([r for r in _read(store_url)[0] if r.started_at]) >= 2, 60)
        finally:
            runner.stop()
        out = runner.output()
        assert "self-fenced" in out, out[-3000:]


def test_a_frozen_runner_that_thaws_kills_its_run(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "project"
    marker = "fleetmark-freeze"
    _project(root, marker)
    with (
        hosts("edge") as made,
        control_plane(root, store_url, tmp_path / "start.log", "--expose") as plane,
    ):
        host = made["edge"]
        plane.push()
        url = f"http://{host.peer}:{plane.port}"
        runner = start_runner(join_runner(plane, tmp_path, "f1", ["edge"], 1, host=host, url=url))
        try:
            plane.trigger("remote")
            run = wait_for(lambda: _started(store_url), 90)
            wait_for(lambda: run_processes(marker), 30)
            # pause the others' work too: the runner is the only one with the label
            assert plane.control("POST", "/agents/remote/pause").status_code == 200
            host.freeze()

            def lost() -> bool:
                [now] = [r for r in _read(store_url)[0] if r.id == run.id]
                return now.state is RunState.LOST

            wait_for(lost, 40)
            assert run_processes(marker)  # frozen: still there
            host.thaw()
            thawed = time.monotonic()
            wait_for(lambda: not run_processes(marker), 10, interval=0.05)
            assert time.monotonic() - thawed < 5
            # its late report was refused: the run stays lost
            wait_for(lambda: "handed on" in runner.output(), 30)
            [after] = [r for r in _read(store_url)[0] if r.id == run.id]
            assert after.state is RunState.LOST
        finally:
            runner.stop()
