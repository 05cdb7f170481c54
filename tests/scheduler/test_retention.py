"""historyRetentionDays: old runs, run directories and logs are pruned; recent ones stay."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from corral.scheduler.retention import prune_history
from corral.scheduler.service import agent_specs
from corral.store import (
    NewItem,
    NewReceipt,
    ReceiptOutcome,
    RunState,
    Store,
    TriggerKind,
    new_receipt_id,
)
from tests.scheduler.helpers import write_project


async def _finished_run(store: Store) -> str:
    queued = await store.enqueue(NewItem(agent="dev", trigger=TriggerKind.MANUAL))
    [claim] = await store.claim("t", lease_seconds=60, limit=1, item_id=queued.item.id)
    assert claim.run.fence is not None
    await store.finalize(claim.run.id, fence=claim.run.fence, state=RunState.SUCCEEDED, exit_code=0)
    return claim.run.id


def _files_of(root: Path, run_id: str, age_days: float) -> tuple[Path, Path]:
    run_dir = root / ".corral" / "runs" / run_id
    (run_dir / ".corral").mkdir(parents=True)
    (run_dir / ".corral" / "prompt.md").write_text("p")
    log = root / ".corral" / "logs" / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("out")
    stamp = (datetime.now(UTC) - timedelta(days=age_days)).timestamp()
    for path in [run_dir / ".corral" / "prompt.md", run_dir / ".corral", run_dir, log]:
        os.utime(path, (stamp, stamp))
    return run_dir, log


async def test_old_history_goes_recent_stays(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "p", {"dev": {"command": "true"}}, "historyRetentionDays = 7\n"
    )
    await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=10)
    real_clock = store.clock
    store.clock = lambda: real_clock() - timedelta(days=8)
    old = await _finished_run(store)
    store.clock = real_clock
    recent = await _finished_run(store)
    old_dir, old_log = _files_of(project.root, old, age_days=8)
    new_dir, new_log = _files_of(project.root, recent, age_days=1)

    pruned = await prune_history(project, store)

    assert (pruned.runs, pruned.items, pruned.run_dirs, pruned.logs) == (1, 1, 1, 1)
    assert await store.get_run(old) is None
    recent_run = await store.get_run(recent)
    assert recent_run is not None
    # The old run's finished item went with it; the recent one's stays.
    assert [item.id for item in await store.list_items()] == [recent_run.item_id]
    assert not old_dir.exists() and not old_log.exists()
    assert new_dir.exists() and new_log.exists()


async def test_a_directory_still_written_to_is_kept(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"dev": {"command": "true"}})
    run_dir, _ = _files_of(project.root, "dev-000000000001", age_days=30)
    (run_dir / "fresh-output.txt").write_text("still working")  # modified now
    pruned = await prune_history(project, store)
    assert pruned.run_dirs == 0 and run_dir.exists()
    assert pruned.logs == 1


async def test_old_webhook_receipts_go_recent_stay(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "p", {"dev": {"command": "true"}}, "historyRetentionDays = 7\n"
    )

    async def receipt() -> str:
        new = NewReceipt(
            id=new_receipt_id(),
            source="gh",
            outcome=ReceiptOutcome.REFUSED,
            headers={},
            body=b"{}",
            body_size=2,
            verified=False,
        )
        return (await store.record_delivery(new))[0].id

    real_clock = store.clock
    store.clock = lambda: real_clock() - timedelta(days=8)
    old = await receipt()
    store.clock = real_clock
    recent = await receipt()

    pruned = await prune_history(project, store)

    assert pruned.receipts == 1
    assert await store.get_receipt(old) is None and await store.get_receipt(recent) is not None


async def test_old_pool_decisions_go_recent_stay(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "p",
        {"dev": {"command": "true"}},
        "historyRetentionDays = 7\n",
        tables={"dev": "[scale]\nmin = 0\nmax = 2\n"},
    )
    await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=3, max_reruns=10)
    assert await store.take_pool_lease("dev", "s", lease_seconds=60) is not None

    async def decide(size: int) -> None:
        await store.set_pool_size(
            "dev",
            "s",
            size=size,
            previous=0,
            policy="reactive",
            reason="r",
            inputs={},
            record=True,
        )

    real_clock = store.clock
    store.clock = lambda: real_clock() - timedelta(days=8)
    await decide(2)
    store.clock = real_clock
    await decide(1)
    pruned = await prune_history(project, store)
    assert pruned.decisions == 1
    assert [d.desired for d in await store.pool_decisions("dev")] == [1]
