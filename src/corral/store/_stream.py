"""Task streaming: the ``[[tasks]]`` trigger of an agent, as one transaction per tick.

A trigger's items are the queue items whose dedupe key starts with its prefix
``tasks:<agent>:<n>:`` (each item's key ends with a fresh suffix). A tick counts in a
read transaction first; when runs are due it counts again and queues them in ONE write
transaction that first locks the agent's row (``lock_agent_state``: PostgreSQL row lock;
SQLite's BEGIN IMMEDIATE), so ticks of several schedulers take turns and each sees the
items the one before it queued:

- ``claimable``: the open tasks the trigger's filter matches whose every requirement is
  done (what ``task-claim --project P --label L`` would take), counted up to a cap;
- ``live``: the agent's queued and running items of any of its ``[[tasks]]`` triggers;
  ``waiting``: this trigger's live items whose run holds no claim yet (each is expected to
  take one claimable task);
- it queues ``min(claimable - waiting, scale - live)`` items (none below zero).

So the agent's streamed runs track ``min(claimable, scale)``: never more runs waiting to
claim than claimable tasks, never more than ``scale`` runs, and since every tick recounts
from the board itself (level, not edge), no change that makes a task claimable (added, a
requirement done, a claim released or lapsed) can be missed.

A run that ends without finishing a task (it claimed nothing, or let its claim go) starts
an idle streak; while the trigger's last ended runs are idle, its next run waits
``IDLE_BASE * 2 ** (streak - 1)`` seconds (at most ``IDLE_MAX``) after the last one
ended: a task someone else took, or a skill that never claims, cannot make a restart storm.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from corral.store._core import Transaction
from corral.store._queue import QueueOps
from corral.store.records import ItemState, NewItem, ProjectState, QueueItem, TriggerKind
from corral.tasks._model import TaskError, check_id

__all__ = ["IDLE_BASE", "IDLE_MAX", "StreamOps", "StreamTick", "stream_prefix"]

#: The first wait after an idle streamed run, in seconds; doubled per idle run after it.
IDLE_BASE = 1.0
#: The longest wait between idle streamed runs, in seconds.
IDLE_MAX = 300.0
#: How many ended runs of a trigger are read to measure its idle streak.
_STREAK_WINDOW = 10


def stream_prefix(agent: str, trigger: int | None = None) -> str:
    """The dedupe-key prefix of ``agent``'s ``[[tasks]]`` trigger ``trigger`` (its index),
    or of all its ``[[tasks]]`` triggers."""
    return f"tasks:{agent}:" if trigger is None else f"tasks:{agent}:{trigger}:"


@dataclasses.dataclass(frozen=True, slots=True)
class StreamTick:
    """What one tick of a ``[[tasks]]`` trigger saw and did."""

    #: Claimable matching tasks (counted up to scale + live runs).
    claimable: int
    #: The agent's queued and running streamed runs (every ``[[tasks]]`` trigger).
    live: int
    #: This trigger's live runs that hold no claim yet.
    waiting: int
    #: Consecutive most recent ended runs of this trigger that finished no task.
    idle_streak: int
    #: The items queued by this tick.
    queued: tuple[QueueItem, ...] = ()
    #: While idle runs hold the trigger back: when the next run may start.
    held_until: datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Board:
    """One trigger's filter, as a tick's queries take it."""

    agent: str
    prefix: str
    project: str
    labels: object  # the store's encoding of the label list
    min_priority: int
    scale: int


class StreamOps(QueueOps):
    """The ``[[tasks]]`` trigger's tick; part of ``Store``."""

    async def stream_tasks(
        self,
        agent: str,
        trigger: int,
        *,
        project: str,
        labels: Sequence[str] = (),
        min_priority: int = 1,
        scale: int,
        detail: dict[str, object] | None = None,
    ) -> StreamTick:
        """One tick of ``agent``'s ``[[tasks]]`` trigger number ``trigger`` (see the module):
        queue the runs the board calls for, in one transaction."""
        check_id(project, "project")
        for label in labels:
            check_id(label, "label")
        if scale < 0 or trigger < 0:
            raise TaskError(f"stream_tasks: scale and trigger must be >= 0, got {scale}, {trigger}")
        board = _Board(
            agent, stream_prefix(agent, trigger), project, self.encode_list(sorted(set(labels))),
            min_priority, scale,
        )  # fmt: skip

        # Most ticks queue nothing: they read without taking the agent's row (nor, on
        # SQLite, the database's write lock); only a tick that finds runs due takes it and
        # counts again, locked.
        async def read(tx: Transaction) -> tuple[StreamTick, int]:
            return await self._stream_count(tx, board)

        async def write(tx: Transaction) -> StreamTick:
            await tx.fetch_one("lock_agent_state", {"agent": agent})
            tick, wanted = await self._stream_count(tx, board)
            if wanted <= 0:
                return tick
            queued = await self._stream_queue(tx, board, wanted, detail)
            return dataclasses.replace(tick, queued=queued)

        seen, due = await self.atomic(read, write=False)
        if due <= 0:
            return seen
        return await self.atomic(write)

    async def _stream_count(self, tx: Transaction, board: _Board) -> tuple[StreamTick, int]:
        """What the board calls for: the tick as seen, and how many runs to queue now."""
        now = self.now()
        params = {"agent": board.agent, "prefix": stream_prefix(board.agent)}
        live = len(await tx.fetch_all("stream_items_live", params))
        waiting = 0
        params = {"agent": board.agent, "prefix": board.prefix}
        for row in await tx.fetch_all("stream_items_live", params):
            held = None
            if row["run_id"] is not None:
                held = await tx.fetch_one("run_holds_task", {"run_id": row["run_id"]})
            if held is None or int(held["n"]) == 0:
                waiting += 1
        counting: dict[str, object] = {
            "project": board.project,
            "labels": board.labels,
            "min_priority": board.min_priority,
            "cap": board.scale + live + 1,
        }
        counted = await tx.fetch_one("count_stream_tasks", counting)
        claimable = 0 if counted is None else int(counted["n"])
        streak, last_end = await self._idle_streak(tx, board.agent, board.prefix)
        tick = StreamTick(claimable, live, waiting, streak)
        wanted = min(claimable - waiting, board.scale - live)
        if wanted > 0 and streak and last_end is not None:
            wait = min(IDLE_BASE * 2 ** (streak - 1), IDLE_MAX)
            until = last_end + timedelta(seconds=wait)
            if now < until:
                return dataclasses.replace(tick, held_until=until), 0
            wanted = 1  # one run tries again; the rest follow if it finishes a task
        return tick, wanted

    async def _stream_queue(
        self, tx: Transaction, board: _Board, wanted: int, detail: dict[str, object] | None
    ) -> tuple[QueueItem, ...]:
        project_row = await tx.fetch_one("get_project")
        state = ProjectState.from_row(self._returned(project_row, "get_project"))
        queued: list[QueueItem] = []
        for _ in range(wanted):
            new = NewItem(
                agent=board.agent,
                trigger=TriggerKind.SCHEDULE,
                trigger_detail=detail,
                dedupe_key=board.prefix + secrets.token_hex(8),
            )
            result = await self._enqueue_locked(tx, state, new, "refuse")
            queued.append(result.item)
            if result.item.state is not ItemState.QUEUED:
                break  # rejected (disabled, over budget, queue full): no more this tick
        return tuple(queued)

    async def _idle_streak(
        self, tx: Transaction, agent: str, prefix: str
    ) -> tuple[int, datetime | None]:
        """How many of the trigger's most recent ended items ran no task to its end, and
        when the latest of them ended."""
        rows = await tx.fetch_all(
            "stream_items_ended", {"agent": agent, "prefix": prefix, "limit": _STREAK_WINDOW}
        )
        streak = 0
        last_end: datetime | None = None
        for row in rows:
            finished = 0
            if row["run_id"] is not None:
                found = await tx.fetch_one("run_finished_task", {"run_id": row["run_id"]})
                finished = 0 if found is None else int(found["n"])
            if finished:
                break
            if last_end is None:
                at = row["finished_at"] or row["enqueued_at"]
                last_end = self.decode_time(at)
            streak += 1
        return streak, last_end
