"""A run learns that it lost a lock: `rlock-heartbeat` answers "lock lost", exit 13.

Real runs of a real scheduler and gateway (tests/gateway/fleet.py), both stores.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from corral.store import RunState, Store
from tests.gateway.fleet import running_fleet
from tests.scheduler.helpers import wait_for

KEY = "deploy://api-prod"
EXIT_LOCK_LOST = 13


async def test_a_heartbeat_after_the_lock_went_to_another_run_says_lost(
    tmp_path: Path, store: Store
) -> None:
    first = (
        f'rlock "{KEY}" > /dev/null || exit 3; touch "$OUT/first.held"; '
        'while [ ! -e "$OUT/taken" ]; do sleep 0.05; done; '
        f'rlock-heartbeat "{KEY}" > "$OUT/heartbeat.json"; echo "$?" > "$OUT/heartbeat.code"'
    )
    second = f'rlock "{KEY}" > "$OUT/second.json" && touch "$OUT/taken"; sleep 5'
    agents: dict[str, dict[str, object]] = {
        "first": {"command": first},
        "second": {"command": second},
    }
    # Locks expire one second after they were taken or last refreshed.
    async with running_fleet(tmp_path / "p", store, agents, "resourceLockTimeout = 1\n") as f:
        await f.trigger("first")
        await wait_for(lambda: f.out("first.held").exists())
        await asyncio.sleep(1.3)  # the first run's lock expired; nobody else wants it yet
        await f.trigger("second")
        await f.finished("first", 1)
        (taker,) = await store.list_runs(agent="second")
        await f.scheduler.executor.stop(taker.id, "test over")
    assert json.loads(f.out("second.json").read_text())["ok"] is True
    assert json.loads(f.out("heartbeat.json").read_text()) == {
        "ok": False,
        "reason": "lock lost",
        "key": KEY,
        "holder": taker.id,
    }
    assert f.out("heartbeat.code").read_text().strip() == str(EXIT_LOCK_LOST)


async def test_a_heartbeat_from_a_run_that_has_ended_says_lost(
    tmp_path: Path, store: Store
) -> None:
    # The run keeps what its commands need, to call them again after it ended (as a
    # process that outlived its run would).
    holder = f'rlock "{KEY}" > /dev/null || exit 3; env > "$OUT/env"'
    agents: dict[str, dict[str, object]] = {"holder": {"command": holder}}
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("holder")
        (run,) = await f.finished("holder", 1)
        assert run.state is RunState.SUCCEEDED
        lines = f.out("env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        done = await asyncio.to_thread(
            subprocess.run,
            ["rlock-heartbeat", KEY],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == EXIT_LOCK_LOST, done
    answer = json.loads(done.stdout)
    assert answer["ok"] is False and answer["reason"] == "lock lost"
    assert f"run {run.id} has ended (succeeded)" in answer["error"]
    assert await store.list_locks() == []
