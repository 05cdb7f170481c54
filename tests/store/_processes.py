"""Worker processes for the multi-process store tests.

A worker prints ``ready`` once connected, waits for ``go`` on stdin (so every
worker starts its work at the same moment), then prints one JSON line of results.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

Process = asyncio.subprocess.Process


async def spawn(script: Path, *args: object) -> Process:
    """Start ``script`` and wait until it says it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *map(str, args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=16 * 1024 * 1024,  # a result is one long JSON line
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    assert line == b"ready\n", line
    return proc


def go(proc: Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")


async def result_of(proc: Process, timeout: float = 90) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=timeout)
    return dict(json.loads(line))


async def reap(procs: list[Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_together(procs: list[Process]) -> list[dict[str, Any]]:
    """Release every worker at once; return their results once all exited cleanly."""
    try:
        for proc in procs:
            go(proc)
        results = await asyncio.gather(*(result_of(proc) for proc in procs))
        assert [await asyncio.wait_for(proc.wait(), 30) for proc in procs] == [0] * len(procs)
    finally:
        await reap(procs)
    return list(results)
