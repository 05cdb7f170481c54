"""`historyRetentionDays`: forget runs, finished queue items, run directories, logs,
webhook receipts and the autoscaler's decisions older than that.

The store deletes rows in small batches, one transaction each, so a pass over a long
history never holds the store's writer for long (see ``Store.prune_runs``)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from corral.project import Project
from corral.store.protocols import PoolStore, QueueStore, RunStore, WebhookStore

__all__ = ["HistoryStore", "Pruned", "prune_history"]

log = logging.getLogger("corral.retention")


class HistoryStore(RunStore, QueueStore, WebhookStore, PoolStore, Protocol):
    """What retention prunes: runs, finished queue items, webhook receipts, the
    autoscaler's decisions and the ended runners the fleet autoscaler started."""


@dataclass(frozen=True)
class Pruned:
    runs: int
    run_dirs: int
    logs: int
    receipts: int = 0
    items: int = 0
    decisions: int = 0


async def prune_history(
    project: Project, store: HistoryStore, *, now: datetime | None = None
) -> Pruned:
    """Delete ended runs and finished queue items, run directories and logs untouched,
    and webhook receipts received, longer ago than the retention.

    Files are judged by their modification time, so a directory of a run that is
    still going (it writes its files) is never removed.
    """
    days = project.config.history_retention_days
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    runs = await store.prune_runs(cutoff)
    items = await store.prune_items(cutoff)
    receipts = await store.prune_receipts(cutoff)
    decisions = await store.prune_pool_decisions(cutoff)
    decisions += await store.prune_fleet_members(cutoff)
    state = project.root / ".corral"
    dirs, logs = await asyncio.to_thread(_prune_files, state, cutoff.timestamp())
    if runs or items or dirs or logs or receipts or decisions:
        log.info(
            "pruned %d run(s), %d queue item(s), %d run directory(ies), %d log(s), "
            "%d webhook receipt(s), %d pool decision(s) older than %d days",
            runs,
            items,
            dirs,
            logs,
            receipts,
            decisions,
            days,
            extra={"action": "history_pruned"},
        )
    return Pruned(runs, dirs, logs, receipts, items, decisions)


def _prune_files(state: Path, cutoff: float) -> tuple[int, int]:
    dirs = logs = 0
    for run_dir in _children(state / "runs"):
        if run_dir.is_dir() and _newest_mtime(run_dir) < cutoff:
            shutil.rmtree(run_dir, ignore_errors=True)
            dirs += 1
    for log_file in _children(state / "logs"):
        if log_file.suffix == ".log" and log_file.stat().st_mtime < cutoff:
            log_file.unlink(missing_ok=True)
            logs += 1
    return dirs, logs


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            newest = max(newest, path.lstat().st_mtime)
        except FileNotFoundError:
            continue
    return newest
