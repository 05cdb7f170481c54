"""The live view of `corral start`: agents, queues, recent runs and locks, refreshed in place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from corral.cli._render import cell, console, fmt_duration, safe
from corral.inert import inert
from corral.scheduler.service import Scheduler
from corral.store import AgentState, Lock, ProjectState, Run

__all__ = ["LiveView"]

_REFRESH = 0.5


@dataclass
class _Snapshot:
    project: ProjectState | None = None
    agents: list[AgentState] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    locks: list[Lock] = field(default_factory=list)
    note: str = ""


class LiveView:
    def __init__(self, scheduler: Scheduler, url: str, warning: str | None) -> None:
        self.scheduler = scheduler
        self.url = url
        self.warning = warning
        self.snapshot = _Snapshot()

    async def run(self) -> None:
        with Live(self.render(), console=console, refresh_per_second=4, transient=False) as live:
            while True:
                await self.refresh()
                live.update(self.render())
                await asyncio.sleep(_REFRESH)

    async def refresh(self) -> None:
        store = self.scheduler.store
        self.snapshot = _Snapshot(
            project=await store.project_state(),
            agents=[a for a in await store.agent_states() if a.present],
            runs=await store.list_runs(limit=10),
            locks=await store.list_locks(),
        )

    def render(self) -> RenderableType:
        snap = self.snapshot
        state = "draining" if self.scheduler.draining else "running"
        if snap.project is not None and snap.project.paused:
            state += ", project paused"
        scheduler_id = self.scheduler.info.id if self.scheduler.info else "-"
        head = Text.from_markup(
            f"[bold]corral[/] scheduler {safe(scheduler_id)}"
            f"  {state}  gateway {safe(self.url)}  (Ctrl-C drains and stops)"
        )
        parts: list[RenderableType] = [head]
        if self.warning:
            parts.append(Text(f"warning: {inert(self.warning)}", style="yellow"))
        watcher = self.scheduler.watcher
        if watcher is not None and watcher.error:  # a bad edit: the last good config runs
            report = inert(watcher.error, newlines=True)
            note = f"not reloaded (running the last good configuration): {report}"
            parts.append(Text(note, style="red"))
        parts += [self._agents(snap.agents), self._runs(snap.runs)]
        if snap.locks:
            parts.append(self._locks(snap.locks))
        return Group(*parts)

    def _agents(self, agents: list[AgentState]) -> Table:
        table = Table("agent", "state", "running", "queued", title="agents", title_justify="left")
        for a in agents:
            status = "disabled" if not a.enabled or a.scale == 0 else "paused" if a.paused else "ok"
            table.add_row(cell(a.agent), status, f"{a.active}/{a.scale}", str(a.queued))
        return table

    def _runs(self, runs: list[Run]) -> Table:
        table = Table("run", "state", "status", "age", title="recent runs", title_justify="left")
        now = datetime.now(UTC)
        for r in runs:
            age = r.duration if r.ended_at else now - (r.started_at or r.created_at)
            table.add_row(
                cell(r.id),
                cell(r.state.value),
                cell(r.status_text or r.error or ""),
                fmt_duration(age),
            )
        return table

    def _locks(self, locks: list[Lock]) -> Table:
        table = Table("key", "holder", "held for", title="locks", title_justify="left")
        now = datetime.now(UTC)
        for lock in locks:
            table.add_row(cell(lock.key), cell(lock.run_id), fmt_duration(now - lock.acquired_at))
        return table
