"""`corral runs`: the runs list's filters (trigger, search, a time window) and its pages
(--before the cursor the page before printed), as the dashboard and the control API have
them."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from corral.store import NewRun, TriggerKind, open_store
from tests.cli.conftest import Corral

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _seed(project: Path) -> list[str]:
    """Five runs of hello, a minute apart: the webhook ones name a deploy."""
    ids = []
    async with await open_store(f"sqlite:///{project / '.corral' / 'state.db'}") as store:
        for i in range(5):
            store.clock = lambda i=i: T0 + timedelta(minutes=i)  # type: ignore[misc]
            webhook = i % 2 == 0
            run = await store.create_run(
                NewRun(
                    agent="hello",
                    trigger=TriggerKind.WEBHOOK if webhook else TriggerKind.MANUAL,
                    trigger_detail={"title": f"Deploy <{i}>"} if webhook else None,
                )
            )
            ids.append(run.id)
    return ids


def test_runs_filters_and_pages(corral: Corral, project: Path) -> None:
    ids = asyncio.run(_seed(project))

    def listed(*args: str) -> list[str]:
        answer = corral("runs", "--json", *args, cwd=project)
        assert answer.returncode == 0, answer.stderr
        return [run["id"] for run in json.loads(answer.stdout)]

    assert listed() == ids[::-1]
    assert listed("--trigger", "webhook") == [ids[4], ids[2], ids[0]]
    assert listed("-q", "DEPLOY <2>") == [ids[2]]
    assert listed("-q", ids[3]) == [ids[3]]
    assert listed(
        "--since", "2026-03-01T12:01:00+00:00", "--until", "2026-03-01T12:03:00+00:00"
    ) == [
        ids[3],
        ids[2],
        ids[1],
    ]

    # Pages: the table says how to get the next one; the last page says nothing more.
    first = corral("runs", "-n", "2", cwd=project)
    assert first.returncode == 0, first.stderr
    cursor = re.search(r"--before (\S+)", first.stdout)
    assert cursor is not None, first.stdout
    assert listed("-n", "2", "--before", cursor.group(1)) == [ids[2], ids[1]]
    last = corral("runs", "-n", "5", cwd=project)
    assert "--before" not in last.stdout

    bad = corral("runs", "--before", "yesterday", cwd=project)
    assert bad.returncode != 0
    assert "not a runs-list cursor" in bad.stderr and "--before" in bad.stderr
