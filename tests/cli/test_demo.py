"""`corral demo`: the README's first command runs a real fleet end to end, offline."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from corral.project import load_project
from corral.store import Run, open_store
from tests.cli.conftest import Corral

pytestmark = pytest.mark.slow

DURATION = 12.0


def _runs(root: Path) -> list[Run]:
    async def go() -> list[Run]:
        async with await open_store(load_project(root).state_url) as store:
            return await store.list_runs(limit=10_000)

    return asyncio.run(go())


def _idle_gaps(runs: list[Run], start: datetime, end: datetime) -> list[tuple[float, float]]:
    """The stretches of [start, end] in which no run was going, in seconds from start."""
    spans = sorted(
        (r.started_at, r.ended_at) for r in runs if r.started_at is not None and r.ended_at
    )
    gaps, covered = [], start
    for begun, ended in spans:
        if begun > covered:
            gaps.append(((covered - start).total_seconds(), (begun - start).total_seconds()))
        covered = max(covered, ended)
    if covered < end:
        gaps.append(((covered - start).total_seconds(), (end - start).total_seconds()))
    return gaps


def test_the_demo_fleet_works_end_to_end(corral: Corral, tmp_path: Path) -> None:
    try:
        result = corral("demo", str(tmp_path / "demo"), "--duration", f"{DURATION:g}")
    except subprocess.TimeoutExpired as exc:  # the fixture allows 60 s
        pytest.fail(f"the demo did not finish: {exc}")
    assert result.returncode == 0, result.stderr
    err, out = result.stderr, result.stdout
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/dashboard", err)
    assert "webhook issue #11 labeled agent: 202 (queued for dev)" in err
    assert "webhook issue #11 again (same delivery id): 200 (duplicate delivery" in err
    assert "webhook a forged delivery (bad signature): 401 (signature does not match)" in err

    assert out.startswith("== corral stat\n")
    assert re.search(r"^ dev +webhook +idle +0/3 +0", out, re.M)
    summary = out[out.index("what happened:") :]
    assert "webhook deliveries: 1x 200, 14x 202, 1x 401" in summary
    runs = re.search(
        r"runs: (\d+) \((\d+) succeeded\); by agent: dev 14, janitor (\d+), reviewer (\d+)",
        summary,
    )
    assert runs is not None, summary
    total, succeeded, janitor, reviewer = map(int, runs.groups())
    assert total == succeeded == 14 + janitor + reviewer
    assert janitor >= 2  # the manual run and the rerun it asked for
    locks = re.search(r"issue locks: (\d+) granted, (\d+) refused", summary)
    assert locks is not None and locks.groups() == (str(14 - int(locks.group(2))), "2")
    calls = re.search(r"calls answered: (\d+); reruns: (\d+)", summary)
    assert calls is not None and int(calls.group(1)) == reviewer == 12
    assert int(calls.group(2)) >= 1


def test_the_demo_keeps_the_fleet_busy_until_the_end(corral: Corral, tmp_path: Path) -> None:
    """The fleet works through the whole duration (the dashboard shows it working), not
    only through its first half: from the first run to the end of the demo's window no
    stretch longer than a second passes without a run going. Then `corral stats` sums it
    up, and `corral stats --calls` shows dev calling reviewer."""
    root, duration = tmp_path / "demo", 30.0
    result = corral("demo", str(root), "--duration", f"{duration:g}")
    assert result.returncode == 0, result.stderr
    runs = _runs(root)
    start = min(r.started_at for r in runs if r.started_at is not None)
    end = start + timedelta(seconds=duration * 0.95)
    gaps = [(a, b) for a, b in _idle_gaps(runs, start, end) if b - a > 1.0]
    assert not gaps, f"the fleet sat idle (seconds from its first run): {gaps}"

    stats = corral("stats", "--json", cwd=root)
    assert stats.returncode == 0, stats.stderr
    agents = {a["agent"]: a for a in json.loads(stats.stdout)["agents"]}
    assert agents["dev"]["totalRuns"] == agents["dev"]["okRuns"] == 14
    calls = corral("stats", "--calls", cwd=root)
    assert calls.returncode == 0, calls.stderr
    assert re.search(r"^ *dev +reviewer +12 +1\.0 ", calls.stdout, re.M), calls.stdout
