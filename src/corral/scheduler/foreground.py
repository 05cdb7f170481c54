"""`corral run` in the foreground: one run (and its reruns) in this process.

The run goes through the same queue and claim as any other, so the caps and
the queue bound hold for it too; this process holds the lease and renews it.
The item is reserved for this process in the transaction that queues it (and
its reruns in the one that queues them): a scheduler running meanwhile never
claims it, however fresh its heartbeat. If this process dies before it claims
the item, the reservation lapses and any scheduler runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable

from corral.errors import RunError, UsageError
from corral.project import Agent, Project
from corral.runtime import Sink
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.executor import RunExecutor, RunResult
from corral.scheduler.orphans import reap_orphans
from corral.scheduler.service import SchedulerOptions, sync_config
from corral.scheduler.watchdog import boottime, fence_deadline
from corral.store import Claim, ItemState, NewItem, QueueItem, Store, StoreError, TriggerKind

log = logging.getLogger("corral.run")

__all__ = ["run_in_foreground"]

Waiting = Callable[[QueueItem], None]


async def run_in_foreground(
    project: Project,
    store: Store,
    agent: Agent,
    prompt: str | None,
    sink: Sink | None = None,
    *,
    on_wait: Waiting | None = None,
    options: SchedulerOptions | None = None,
    link: AgentLink | None = None,
) -> list[RunResult]:
    """Run ``agent`` now; return the run and any reruns it asked for, in order.

    ``link`` connects the run to a gateway this process serves (the in-run commands);
    without it they answer that there is no gateway.
    """
    opts = options or SchedulerOptions()
    owner = f"cli-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    await sync_config(store, project)
    reap_orphans(await store.recover_lapsed())
    queued = await store.enqueue_reserved(
        NewItem(agent=agent.name, trigger=TriggerKind.MANUAL, prompt=prompt),
        owner=owner,
        seconds=opts.lease_seconds,
    )
    if queued.item.state is ItemState.REJECTED:
        raise UsageError(queued.item.reason or f"agent '{agent.name}' refused the run")
    executor = RunExecutor(
        project,
        store,
        grace=opts.kill_grace,
        link=link,
        store_retry=opts.store_retry,
        reserve_reruns=True,
    )
    results: list[RunResult] = []
    item: QueueItem | None = queued.item
    while item is not None:
        claim = await _claim(store, owner, item, opts, on_wait)
        result = await _execute(executor, store, owner, claim, sink, opts)
        results.append(result)
        item = result.rerun_item
    return results


async def _claim(
    store: Store, owner: str, item: QueueItem, opts: SchedulerOptions, on_wait: Waiting | None
) -> Claim:
    """Claim ``item`` as soon as the caps allow; say so while waiting, and keep the item
    reserved for ``owner`` meanwhile."""
    told = False
    loop = asyncio.get_running_loop()
    reserved = loop.time()
    while True:
        claims = await store.claim(
            owner, lease_seconds=opts.lease_seconds, limit=1, item_id=item.id
        )
        if claims:
            return claims[0]
        current = await store.get_item(item.id)
        if current is None or current.state is not ItemState.QUEUED:
            state = "gone" if current is None else current.state.value
            reason = f": {current.reason}" if current is not None and current.reason else ""
            raise RunError(f"queue item {item.id} of agent '{item.agent}' is {state}{reason}")
        if on_wait is not None and not told:
            on_wait(current)
            told = True
        if loop.time() - reserved >= opts.renew_every:
            await store.reserve(item.id, owner, seconds=opts.lease_seconds)
            reserved = loop.time()
        await asyncio.sleep(opts.poll_interval)


async def _execute(
    executor: RunExecutor,
    store: Store,
    owner: str,
    claim: Claim,
    sink: Sink | None,
    opts: SchedulerOptions,
) -> RunResult:
    run_id = claim.run.id

    async def keep_lease() -> None:
        """Renew the run's lease; a failed renewal is tried again every second, and a
        run whose lease could lapse is stopped first (self-fencing, as a scheduler's
        watchdog does: docs/decisions.md D24)."""
        deadline = fence_deadline(boottime(), opts.lease_seconds)
        due = boottime() + opts.renew_every
        while True:
            await asyncio.sleep(min(1.0, opts.renew_every))
            if boottime() >= deadline:
                reason = (
                    f"self-fenced: `corral run` could not renew the lease of run {run_id} "
                    f"in time (lease {opts.lease_seconds:g} s), so it stopped the run "
                    "before the lease could lapse"
                )
                log.error(reason, extra={"action": "self_fenced", "run_id": run_id})
                await executor.fence_off(run_id, reason)
                return
            if boottime() < due:
                continue
            sent = boottime()
            try:
                await store.renew_leases(owner, lease_seconds=opts.lease_seconds, run_ids={run_id})
            except StoreError as exc:
                log.warning("could not renew the lease of run %s (%s); trying again", run_id, exc)
                due = boottime() + 1.0
                continue
            deadline = max(deadline, fence_deadline(sent, opts.lease_seconds))
            due = sent + opts.renew_every

    async def watch_kills() -> None:
        while True:
            await asyncio.sleep(opts.supervise_every)
            try:
                requests = await store.kill_requests(owner)
            except StoreError:
                continue  # the store is failing: keep_lease decides what that means
            if any(r.id == run_id for r in requests):
                await executor.stop(run_id, "killed by an operator")
                return

    helpers = [asyncio.create_task(keep_lease()), asyncio.create_task(watch_kills())]
    try:
        return await executor.execute(claim, sink)
    finally:
        for task in helpers:
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
