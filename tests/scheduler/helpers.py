"""Building small real projects for scheduler tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from corral.project import Project, load_project
from corral.store import Run, Store


def write_project(
    root: Path,
    agents: dict[str, dict[str, object]],
    project_toml: str = "",
    tables: dict[str, str] | None = None,
) -> Project:
    """A project whose agents run shell commands; ``agents`` maps name -> config values,
    ``tables`` name -> TOML tables appended to that agent's config.toml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(project_toml)
    for name, values in agents.items():
        folder = root / "agents" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "SKILL.md").write_text(f"---\nname: {name}\n---\n# {name}\n")
        lines = []
        for key, value in values.items():
            if key != "command":
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append(f"[harness]\ncommand = {json.dumps(values['command'])}")
        lines.append((tables or {}).get(name, ""))
        (folder / "config.toml").write_text("\n".join(lines) + "\n")
    return load_project(root)


async def wait_for(
    predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def max_overlap(runs: list[Run]) -> int:
    """The largest number of runs that were running at one instant (started..ended)."""
    events: list[tuple[datetime, int]] = []
    for run in runs:
        if run.started_at is None:
            continue
        events.append((run.started_at, 1))
        if run.ended_at is not None:
            events.append((run.ended_at, -1))
    current = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        current += delta
        peak = max(peak, current)
    return peak


async def all_runs(store: Store, agent: str | None = None) -> list[Run]:
    return await store.list_runs(agent=agent, limit=10_000)
