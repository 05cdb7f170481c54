"""Several processes hammering one set of lock keys, on SQLite and PostgreSQL: a key never
has two holders at once, and its tokens strictly increase, judged from the store's own
timestamps."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from corral.store import Store
from tests.store._processes import run_together, spawn

WORKER = Path(__file__).with_name("_lock_worker.py")
PROCESSES = 4
RUNS_PER_PROCESS = 3
SECONDS = 3.0
KEYS = 20

pytestmark = pytest.mark.slow


async def test_processes_never_share_a_lock(store: Store, store_url: str) -> None:
    procs = [
        await spawn(WORKER, store_url, RUNS_PER_PROCESS, SECONDS, KEYS) for _ in range(PROCESSES)
    ]
    results = await run_together(procs)

    by_key: dict[str, list[tuple[int, datetime, datetime]]] = defaultdict(list)
    for result in results:
        for key, token, granted, released in result["holds"]:
            by_key[key].append(
                (token, datetime.fromisoformat(granted), datetime.fromisoformat(released))
            )
    holds = sum(len(entries) for entries in by_key.values())
    assert holds > 100 and sum(r["refused"] for r in results) > 0  # contention happened
    assert len(by_key) == KEYS
    tokens = [token for entries in by_key.values() for token, _, _ in entries]
    assert len(set(tokens)) == len(tokens)
    for key, entries in by_key.items():
        entries.sort()
        for (_, granted, released), (_, next_granted, _) in itertools.pairwise(entries):
            assert granted <= released <= next_granted, key
        # token order is grant order
        assert [g for _, g, _ in entries] == sorted(g for _, g, _ in entries), key
    assert await store.list_locks() == []
