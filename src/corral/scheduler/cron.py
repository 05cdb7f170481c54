"""Cron triggers: each agent's `schedule`, in the host's time zone.

Every scheduler sharing a store runs this loop; a tick is enqueued with a
dedupe key naming the agent and the tick's instant in UTC, so the store keeps
exactly one item per tick however many schedulers saw it, whatever time zone
each of them runs in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone

from croniter import croniter

from corral.project import Project
from corral.store import EnqueueResult, NewItem, TriggerKind

__all__ = ["CronTriggers", "legacy_tick_keys", "next_tick", "tick_key"]

log = logging.getLogger("corral.cron")

Submit = Callable[[NewItem], Awaitable[EnqueueResult]]

#: A tick seen later than this (the host slept, the loop stalled) is skipped, not run late.
MISSED_TICK_LIMIT = timedelta(minutes=5)


def next_tick(expression: str, after: datetime) -> datetime:
    """The first tick of ``expression`` strictly after ``after`` (an aware datetime)."""
    value = croniter(expression, after).get_next(datetime)
    if not isinstance(value, datetime):  # pragma: no cover - croniter's contract
        raise TypeError("croniter returned a non-datetime")
    return value


#: Every UTC offset a host's zone can have, in quarter hours: -12:00 ... +14:00.
_OFFSETS = tuple(timedelta(minutes=15 * q) for q in range(-48, 57))


def tick_key(agent: str, tick: datetime) -> str:
    """The dedupe key of one tick: the same on every scheduler that sees it, whatever
    its time zone (the instant in UTC, to the minute)."""
    return f"schedule:{agent}:{tick.astimezone(UTC).isoformat(timespec='minutes')}"


def legacy_tick_keys(agent: str, tick: datetime) -> tuple[str, ...]:
    """The keys earlier corral versions gave this tick: its local time in whatever
    zone that scheduler ran, so one per UTC offset. A store shared with such a scheduler
    during an upgrade may hold the tick under any of them (the UTC one is ``tick_key``)."""
    instant = tick.astimezone(UTC)
    keys = (
        f"schedule:{agent}:{instant.astimezone(timezone(offset)).isoformat(timespec='minutes')}"
        for offset in _OFFSETS
        if offset
    )
    return tuple(keys)


class CronTriggers:
    """Enqueues one item per tick of each scheduled agent."""

    def __init__(
        self, project: Project, submit: Submit, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._schedules = {
            name: agent.config.schedule
            for name, agent in project.agents.items()
            if agent.config.schedule and agent.enabled
        }
        self._submit = submit
        self._clock = clock or (lambda: datetime.now().astimezone())

    @property
    def schedules(self) -> dict[str, str]:
        return dict(self._schedules)

    async def run(self) -> None:
        if not self._schedules:
            return
        now = self._clock()
        upcoming = {name: next_tick(expr, now) for name, expr in self._schedules.items()}
        while True:
            due_at = min(upcoming.values())
            delay = (due_at - self._clock()).total_seconds()
            if delay > 0:
                await asyncio.sleep(min(delay, 60.0))
                continue
            now = self._clock()
            for name, tick in list(upcoming.items()):
                if tick <= now:
                    await self.fire(name, tick, now)
                    upcoming[name] = next_tick(self._schedules[name], now)

    async def fire(self, agent: str, tick: datetime, now: datetime) -> EnqueueResult | None:
        if now - tick > MISSED_TICK_LIMIT:
            log.warning(
                "skipped a late tick of %s due at %s",
                agent,
                tick.isoformat(),
                extra={"action": "tick_skipped", "agent": agent},
            )
            return None
        new = NewItem(
            agent=agent,
            trigger=TriggerKind.SCHEDULE,
            dedupe_key=tick_key(agent, tick),
            dedupe_aliases=legacy_tick_keys(agent, tick),
        )
        result = await self._submit(new)
        if not result.duplicate:
            log.info("tick of %s", agent, extra={"action": "tick_enqueued", "agent": agent})
        return result
