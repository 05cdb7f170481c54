"""Several processes hammering one set of lock keys, on SQLite and PostgreSQL: a key never
has two holders at once, and its tokens strictly increase, judged from the store's own
timestamps."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from corral.store import Store

WORKER = Path(__file__).with_name("_lock_worker.py")
PROCESSES = 4
RUNS_PER_PROCESS = 3
SECONDS = 3.0
KEYS = 20

pytestmark = pytest.mark.slow


async def start(url: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        str(RUNS_PER_PROCESS),
        str(SECONDS),
        str(KEYS),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=16 * 1024 * 1024,  # the result is one long JSON line
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    assert line == b"ready\n", line
    return proc


async def result_of(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    return dict(json.loads(line))


async def test_processes_never_share_a_lock(store: Store, store_url: str) -> None:
    procs = [await start(store_url) for _ in range(PROCESSES)]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        results = await asyncio.gather(*(result_of(proc) for proc in procs))
        assert [await asyncio.wait_for(proc.wait(), 30) for proc in procs] == [0] * PROCESSES
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

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
