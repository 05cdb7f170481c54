"""Four scheduler processes claiming and finishing at once, on SQLite and PostgreSQL, with
agent scales and a project cap, watched by a checker that samples the store throughout:
never more running than the caps, never two live runs of one item, the counters equal
to the rows; then one process is killed with SIGKILL holding claims, and recovery hands
its items on within the caps. Nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from corral.store import AgentSpec, ItemState, NewItem, RunState, Store, TriggerKind
from tests.store._processes import go, reap, result_of, run_together, spawn
from tests.store.test_queue_processes import peak_overlaps

WORKER = Path(__file__).with_name("_queue_worker.py")
SCALES = {"a": 2, "b": 3, "c": 2, "d": 4}
CAP = 6  # below the sum of the scales (11): the project cap binds
#: Claims the killed scheduler holds: one each of two agents (claims are round robin), so
#: no agent is left without a slot while its leases run out.
HELD = 2
LEASE = 3.0

pytestmark = pytest.mark.slow

#: One consistent snapshot per statement: per agent its scale, its counter and its rows.
_AGENTS = (
    "SELECT a.agent, a.scale, a.running, a.queued + a.requeued,"
    " (SELECT count(*) FROM corral_queue q WHERE q.agent = a.agent AND q.state = 'claimed'),"
    " (SELECT count(*) FROM corral_queue q WHERE q.agent = a.agent AND q.state = 'queued')"
    " FROM corral_agents a"
)
#: Items with more than one live run.
_TWICE = (
    "SELECT item_id, count(*) FROM corral_runs"
    " WHERE item_id IS NOT NULL AND state IN ('starting', 'running')"
    " GROUP BY item_id HAVING count(*) > 1"
)


class Checker:
    """Samples the store from a thread of its own, on a connection of its own, until
    stopped; records every violation it sees and the most claims it saw at once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.violations: list[str] = []
        self.samples = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Checker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        if self.url.startswith("sqlite:///"):
            conn: Any = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 10000")
        else:
            conn = psycopg.connect(self.url, autocommit=True)
        try:
            while not self._stop.is_set():
                self._sample(conn)
                time.sleep(0.002)
        finally:
            conn.close()

    def _sample(self, conn: Any) -> None:
        rows = conn.execute(_AGENTS).fetchall()
        twice = conn.execute(_TWICE).fetchall()
        self.samples += 1
        total = 0
        for agent, scale, running, queued, claimed_rows, queued_rows in rows:
            total += claimed_rows
            if (running, queued) != (claimed_rows, queued_rows):
                self.violations.append(
                    f"{agent}: counters {running, queued} rows {claimed_rows, queued_rows}"
                )
            if claimed_rows > scale:
                self.violations.append(f"{agent}: {claimed_rows} claimed > scale {scale}")
        if total > CAP:
            self.violations.append(f"{total} claimed > project cap {CAP}")
        if twice:
            self.violations.append(f"items with two live runs: {twice}")
        self.peak = max(self.peak, total)


async def setup(store: Store, items: int) -> None:
    specs = [AgentSpec(name, scale, 10_000) for name, scale in SCALES.items()]
    await store.sync_project(specs, scale_cap=CAP, max_attempts=3, max_reruns=0)
    await put(store, items)


async def put(store: Store, items: int) -> None:
    for n in range(items):
        await store.enqueue(NewItem(agent="abcd"[n % 4], trigger=TriggerKind.WEBHOOK))


async def test_four_schedulers_keep_the_caps_and_survive_a_kill(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_TEST_LEASE", str(LEASE))
    await setup(store, 300)
    with Checker(store_url) as checker:
        # 1. Four schedulers to the end of the queue.
        procs = [await spawn(WORKER, "schedule", store_url, 4) for _ in range(4)]
        results = await run_together(procs)
        done = [entry for result in results for entry in result["done"]]
        assert not [entry for entry in done if entry.get("stale")]
        assert sorted(entry["item"] for entry in done) == sorted(
            item.id for item in await store.list_items(limit=1000)
        )
        assert len({entry["fence"] for entry in done}) == len(done) == 300
        assert len({result["owner"] for result in results if result["done"]}) > 1

        # 2. Three schedulers and a fourth that claims and is killed with SIGKILL mid-run.
        await put(store, 200)
        victim = await spawn(WORKER, "hold", store_url, HELD)
        survivors = [await spawn(WORKER, "schedule", store_url, 4) for _ in range(3)]
        try:
            for proc in [victim, *survivors]:
                go(proc)
            held = (await result_of(victim))["held"]
            victim.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(victim.wait(), 30) == -signal.SIGKILL
            outcomes = await asyncio.gather(*(result_of(proc) for proc in survivors))
            assert [await asyncio.wait_for(p.wait(), 30) for p in survivors] == [0, 0, 0]
        finally:
            await reap([victim, *survivors])
        assert len(held) == HELD
        survived = [entry for result in outcomes for entry in result["done"]]
        assert not set(held) & {entry["item"] for entry in survived}

        # 3. The dead scheduler's leases lapse; recovery queues its items again, and
        # four schedulers finish them within the caps.
        await asyncio.sleep(LEASE + 0.5)
        recovered = await store.recover_lapsed()
        assert sorted(entry.item.id for entry in recovered) == sorted(held)
        assert {entry.item.state for entry in recovered} == {ItemState.QUEUED}
        procs = [await spawn(WORKER, "schedule", store_url, 4) for _ in range(4)]
        finals = await run_together(procs)
        redone = [entry for result in finals for entry in result["done"]]
        assert sorted(entry["item"] for entry in redone) == sorted(held)
        assert all(entry["attempt"] == 2 for entry in redone)

    assert checker.violations == []
    assert checker.samples > 20, checker.samples
    assert checker.peak == CAP, checker.peak  # the cap was reached, so it was tested
    items = await store.list_items(limit=1000)
    assert len(items) == 500 and {item.state for item in items} == {ItemState.DONE}
    runs = await store.list_runs(limit=1000)
    assert Counter(run.state for run in runs) == {RunState.SUCCEEDED: 500, RunState.LOST: HELD}
    peak, total_peak = peak_overlaps(runs)
    assert all(peak[agent] <= scale for agent, scale in SCALES.items()), peak
    assert total_peak <= CAP
    states = {s.agent: s for s in await store.agent_states()}
    assert all((s.queued, s.active) == (0, 0) for s in states.values())
