"""The live view of `corral start` shows agents, queues and recent runs."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from corral.cli._live import LiveView
from corral.scheduler.service import Scheduler
from corral.store import NewItem, Store, TriggerKind
from tests.scheduler.helpers import write_project


async def test_the_view_shows_the_fleet(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "p",
        {"dev": {"scale": 2, "command": "true"}, "ops": {"command": "true"}},
        "scale = 1\n",
    )
    scheduler = Scheduler(project, store)
    await scheduler.start()
    await store.set_paused("ops", True)
    for _ in range(3):
        await store.enqueue(NewItem(agent="dev", trigger=TriggerKind.MANUAL))
    [claim] = await store.claim(scheduler.id, lease_seconds=30, limit=5)
    await store.set_run_status(claim.run.id, "reviewing PR #42")
    view = LiveView(scheduler, "http://127.0.0.1:8080", "a warning")
    await view.refresh()
    console = Console(record=True, width=140)
    console.print(view.render())
    text = console.export_text()
    assert f"scheduler {scheduler.id}" in text and "http://127.0.0.1:8080" in text
    assert "warning: a warning" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        rows[cells[0]] = cells
    assert rows["dev"][1:4] == ["ok", "1/2", "2"]
    assert rows["ops"][1:4] == ["paused", "0/1", "0"]
    assert claim.run.id in text and "reviewing PR #42" in text
