"""What /metrics reads: runs that started or ended, and items set aside, since a time.

``corral.gateway.metrics`` counts events from these at scrape time (each one once, by
id), so every gateway sharing a store reports the same fleet-wide counts; the indexes of
migration 0007 keep each read a range scan of the recent rows.
"""

from __future__ import annotations

from datetime import datetime

from corral.store._core import StoreCore
from corral.store._time import require_aware
from corral.store.records import QueueItem, Run

__all__ = ["MetricsOps"]


class MetricsOps(StoreCore):
    """Reads for /metrics; part of ``Store``."""

    async def runs_moved_since(self, since: datetime) -> list[tuple[Run, datetime | None]]:
        """Runs that started or ended at or after ``since``, each with when its queue
        item was queued (None: a run outside the queue, or its item pruned)."""
        params = {"since": self.encode_time(require_aware(since, "since"))}
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("metrics_runs_since", params)
        moved = []
        for row in rows:
            enqueued = row["item_enqueued_at"]
            run = self.run_from_row({k: v for k, v in row.items() if k != "item_enqueued_at"})
            moved.append((run, None if enqueued is None else self.decode_time(enqueued)))
        return moved

    async def items_set_aside_since(self, since: datetime) -> list[QueueItem]:
        """Items dropped (queue full) or rejected at or after ``since``."""
        params = {"since": self.encode_time(require_aware(since, "since"))}
        async with self.transaction(write=False) as tx:
            rows = await tx.fetch_all("metrics_items_set_aside_since", params)
        return [self.item_from_row(row) for row in rows]
