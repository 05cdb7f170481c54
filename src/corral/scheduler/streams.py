"""Task streaming: each agent's ``[[tasks]]`` triggers, ticked by every scheduler.

Every ``every`` seconds, and at once when woken (a run ended, an item was queued), each
enabled agent's ``[[tasks]]`` triggers are ticked: ``Store.stream_tasks`` recounts the
claimable matching tasks and the agent's streamed runs in one transaction and queues the
runs the board calls for (store/_stream.py). The tick is level-triggered, not fed by
events: whatever made a task claimable (added, a requirement done, a claim released or
lapsed, on this process or another) is seen at the next tick, and ticks of several
schedulers take turns on the agent's row, so they never start more runs than one would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from corral.project import Project
from corral.project._models import TaskTrigger
from corral.store import Store, StreamTick
from corral.tasks._model import TaskError, check_id

__all__ = ["TaskStreams", "board_project", "stream_detail"]

log = logging.getLogger("corral.streams")

#: Seconds between ticks when nothing wakes the loop.
TICK_EVERY = 1.0


def board_project(project: Project, trigger: TaskTrigger) -> str:
    """The board project a trigger watches: its own, else the project directory's name
    (the default of `corral tasks add`)."""
    return trigger.project or project.root.name


def stream_detail(board: str, trigger: TaskTrigger, index: int) -> dict[str, Any]:
    """The trigger context a streamed run gets (its prompt's ``<task-trigger>`` block)."""
    return {
        "source": "tasks",
        "trigger": index,
        "project": board,
        "labels": list(trigger.labels),
        "minPriority": trigger.min_priority,
    }


class TaskStreams:
    """The ticks of the current configuration's ``[[tasks]]`` triggers."""

    def __init__(
        self,
        store: Store,
        project: Callable[[], Project],
        on_queued: Callable[[], None],
        *,
        every: float = TICK_EVERY,
    ) -> None:
        self.store = store
        self.project = project
        self.on_queued = on_queued
        self.every = every
        self._wake = asyncio.Event()
        self._bad: set[tuple[str, int]] = set()  # triggers whose default project is invalid

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every)

    async def tick(self) -> list[StreamTick]:
        """One tick of every trigger; the items queued wake the dispatcher."""
        project = self.project()
        ticks: list[StreamTick] = []
        for name, agent in sorted(project.agents.items()):
            if not agent.enabled or not agent.config.tasks:
                continue
            for index, trigger in enumerate(agent.config.tasks):
                board = board_project(project, trigger)
                if not self._valid(name, index, board):
                    continue
                done = await self.store.stream_tasks(
                    name,
                    index,
                    project=board,
                    labels=trigger.labels,
                    min_priority=trigger.min_priority,
                    scale=agent.effective_scale,
                    detail=stream_detail(board, trigger, index),
                )
                ticks.append(done)
                if done.queued:
                    log.info(
                        "the board started %d run(s) of %s (%d claimable task(s) in %s)",
                        len(done.queued),
                        name,
                        done.claimable,
                        board,
                        extra={"action": "tasks_streamed", "agent": name, "project": board},
                    )
        if any(t.queued for t in ticks):
            self.on_queued()
        return ticks

    def _valid(self, agent: str, index: int, board: str) -> bool:
        try:
            check_id(board, "project")
        except TaskError as exc:
            if (agent, index) not in self._bad:
                self._bad.add((agent, index))
                log.error(
                    "agent %s: [[tasks]] number %d has no project, and the default (the "
                    "project directory's name) is not a board project: %s; set project",
                    agent,
                    index + 1,
                    exc,
                    extra={"action": "tasks_trigger_invalid", "agent": agent},
                )
            return False
        return True
