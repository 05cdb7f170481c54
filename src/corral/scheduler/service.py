"""The scheduler: intake, dispatch, supervision and a graceful drain.

One `Scheduler` runs per `corral start`. Several may share one store; every
rule that matters (caps, FIFO, one live run per item, fencing) is enforced by
the store in one transaction, so nothing here relies on being alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from corral.agentcmd import install as install_commands
from corral.project import Project, ScaleConfig
from corral.scheduler import anomalies, rollouts
from corral.scheduler.agentlink import AgentLink
from corral.scheduler.bundles import BundleFollower
from corral.scheduler.cron import CronTriggers
from corral.scheduler.executor import RunExecutor
from corral.scheduler.fleetscale import FleetScaler
from corral.scheduler.orphans import reap_orphans
from corral.scheduler.pools import PoolSizer
from corral.scheduler.reload import (
    ProjectWatcher,
    ReloadSummary,
    keep_running_values,
    summarize,
    weakened,
)
from corral.scheduler.retention import prune_history
from corral.scheduler.streams import TaskStreams
from corral.scheduler.warm import WarmPool
from corral.scheduler.watchdog import Watchdog, boottime, fence_deadline
from corral.store import (
    AgentSpec,
    Claim,
    EnqueueResult,
    NewItem,
    Rollout,
    Run,
    Runner,
    RunState,
    SchedulerInfo,
    Store,
    StoreError,
)
from corral.store._anomalies import hook_failure
from corral.store._notify import QUEUE
from corral.telemetry import RunObserver, observer_for

__all__ = [
    "Scheduler",
    "SchedulerOptions",
    "agent_specs",
    "cap_warning",
    "is_live",
    "log_dropped",
    "sync_config",
]

log = logging.getLogger("corral.scheduler")


@dataclass(frozen=True)
class SchedulerOptions:
    lease_seconds: float = 30.0  # a claim lapses this long after its last renewal
    renew_every: float = 10.0  # how often leases (and the heartbeat) are renewed
    poll_interval: float = 0.2  # dispatch poll when nothing wakes the loop
    supervise_every: float = 0.25  # kill requests are looked for this often
    recover_every: float = 2.0  # lapsed leases of other schedulers are recovered this often
    prune_every: float = 3600.0  # history older than historyRetentionDays is pruned this often
    claim_batch: int = 64
    drain_grace: float = 30.0  # `corral stop`: how long running runs may go on
    kill_grace: float = 10.0  # TERM -> KILL
    reload_every: float = 1.0  # hot reload: how often the project's files are checked
    store_retry: float = 60.0  # how long a run's start and end are retried while the store fails
    pool_tick: float = 1.0  # how often the autoscaler sizes the pools this scheduler decides
    stream_every: float = 1.0  # how often the [[tasks]] triggers recount the board unwoken
    pool_lease_seconds: float = 10.0  # a pool's decider is replaced this long after it stops


def agent_specs(project: Project) -> list[AgentSpec]:
    return [
        AgentSpec(
            agent=a.name,
            scale=a.effective_scale,
            queue_size=a.config.max_work_queue_size,
            daily_cost_cap=a.config.budget.daily_cost,
            pool_min=a.config.scale.min if isinstance(a.config.scale, ScaleConfig) else None,
        )
        for a in project.agents.values()
    ]


def log_dropped(results: Iterable[EnqueueResult]) -> None:
    """Log every item an enqueue dropped to make room (they are recorded in the store)."""
    for result in results:
        for dropped in result.dropped:
            log.warning(
                "dropped item %s of %s: %s",
                dropped.id,
                dropped.agent,
                dropped.reason,
                extra={"action": "item_dropped", "agent": dropped.agent},
            )


async def sync_config(store: Store, project: Project) -> None:
    """Make the store's agents, caps and limits those of ``project``'s configuration."""
    await store.sync_project(
        agent_specs(project),
        scale_cap=project.config.scale,
        max_attempts=project.config.max_attempts,
        max_reruns=project.config.max_reruns,
        daily_cost_cap=project.config.budget.daily_cost,
    )


def cap_warning(project: Project) -> str | None:
    """The documented start-up warning when the agents' scales exceed the project cap."""
    cap = project.config.scale
    total = sum(a.effective_scale for a in project.agents.values())
    if cap is None or total <= cap:
        return None
    return (
        f"the agents' scales add up to {total}, more than the project cap scale = {cap}: "
        f"at most {cap} runs go at once and the rest wait in their queues"
    )


def is_live(info: SchedulerInfo, now: datetime, renew_every: float) -> bool:
    """A scheduler that says it runs and has renewed its heartbeat recently."""
    fresh = now - info.heartbeat_at < timedelta(seconds=3 * renew_every + 5)
    return info.state in ("running", "draining") and fresh


class Scheduler:
    def __init__(
        self,
        project: Project,
        store: Store,
        options: SchedulerOptions | None = None,
        *,
        gateway_url: str | None = None,
        gateway_unix_url: str | None = None,
    ) -> None:
        self.project = project
        self.store = store
        self.options = options or SchedulerOptions()
        self.gateway_url = gateway_url
        self.link = AgentLink(
            gateway_url,
            bin_dir=project.root / ".corral" / "bin",
            unix_url=gateway_unix_url,
            on_queued=self.wake,
            changes=store.changes,  # the store's notices wake this process's waiters too
        )
        self.executor = RunExecutor(
            project,
            store,
            grace=self.options.kill_grace,
            link=self.link,
            store_retry=self.options.store_retry,
        )
        #: Warm workspaces of the agents that ask for them (scheduler/warm.py).
        self.warm = WarmPool(project, self.executor.prepare_warm)
        self.executor.warm = self.warm
        self.info: SchedulerInfo | None = None
        self.draining = False
        #: Set once the scheduler is on its way out (``drain``): unlike ``draining`` (no
        #: new work: also an upgrade's drain, which may be given up), it is never undone.
        self.stopping = False
        self._wake = asyncio.Event()
        #: Called with every wake-up of the dispatcher (work may be claimable).
        self.wake_listeners: set[Callable[[], None]] = set()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self.on_claim: Callable[[Claim], None] | None = None  # observers (live view, benchmarks)
        #: Telemetry ([telemetry]; corral/telemetry): a no-op unless it is enabled.
        self.observer: RunObserver = observer_for(project)
        #: Self-fencing (scheduler/watchdog.py): past this boottime, runs are stopped.
        self.watchdog = Watchdog()
        self.fence_deadline = 0.0
        self.executor.lease_overdue = self.overdue
        #: Hot reload (scheduler/reload.py): None turns it off (tests that want a fixed
        #: configuration); listeners get each new configuration (the gateway's parts).
        self.watcher: ProjectWatcher | None = ProjectWatcher(
            project, self.reload, interval=self.options.reload_every
        )
        self.reload_listeners: list[Callable[[Project], None]] = []
        self._cron_changed = asyncio.Event()
        #: The store's current bundle (`corral push`), followed from start on (None: the
        #: project directory only, for tests that want a fixed configuration).
        #: The store's running rollout (`corral push --canary`), as the bundle follower
        #: last read it: the claims of its agents' runs are assigned to the canary.
        self.rollout: Rollout | None = None
        self.bundles: BundleFollower | None = BundleFollower(
            self, interval=max(self.options.reload_every, 1.0)
        )
        #: The pools of agents with a [scale] table (scheduler/pools.py), sized while this
        #: scheduler holds their leases; woken with the dispatcher.
        self.pools = PoolSizer(
            store,
            lambda: self.id,
            lambda: self.project,
            tick=self.options.pool_tick,
            lease_seconds=self.options.pool_lease_seconds,
            on_grown=self.wake,
        )
        self.wake_listeners.add(self.pools.wake)
        #: The agents' [[tasks]] triggers (scheduler/streams.py), ticked with the dispatcher.
        self.streams = TaskStreams(
            store, lambda: self.project, self.wake, every=self.options.stream_every
        )
        self.wake_listeners.add(self.streams.wake)
        #: The runner fleet's size ([fleet.autoscale]; scheduler/fleetscale.py), decided
        #: while this scheduler holds the fleet autoscaler's lease; woken with the rest.
        self.fleet_scaler = FleetScaler(
            store,
            lambda: self.id,
            lambda: self.project,
            lambda: self.gateway_url,
            tick=self.options.pool_tick,
            lease_seconds=self.options.pool_lease_seconds,
        )
        self.wake_listeners.add(self.fleet_scaler.wake)

    @property
    def id(self) -> str:
        if self.info is None:
            raise RuntimeError("the scheduler is not started")
        return self.info.id

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._runs)

    # -- intake ------------------------------------------------------------------------

    async def submit(
        self, new: NewItem, *, overflow: Literal["drop_oldest", "refuse"] = "drop_oldest"
    ) -> EnqueueResult:
        """Queue an item durably and wake the dispatcher."""
        result = await self.store.enqueue(new, overflow=overflow)
        log_dropped([result])
        self.wake()
        return result

    def wake(self) -> None:
        self._wake.set()
        for listener in list(self.wake_listeners):  # runners' requests for work
            listener()

    def resume(self) -> None:
        """Take new work again after a drain that was given up (a control plane upgrade's
        drain, its rollout halted meanwhile)."""
        self.draining = False
        self.wake()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> SchedulerInfo:
        """Register, recover what dead predecessors on this host left, sync the config."""
        host = socket.gethostname()
        if self.link.bin_dir is not None:
            install_commands(self.link.bin_dir)
        await self._recover_dead_predecessors(host)
        if self.bundles is not None:
            await self.bundles.check()  # the pushed project, when there is one
        await sync_config(self.store, self.project)
        self.info = await self.store.register_scheduler(
            host=host, pid=os.getpid(), gateway_url=self.gateway_url
        )
        await self._recover_lapsed()
        log.info("scheduler %s started", self.id, extra={"action": "scheduler_started"})
        return self.info

    async def run(self, stop: asyncio.Event, stop_now: asyncio.Event | None = None) -> None:
        """Dispatch until ``stop`` is set, then drain; ``stop_now`` cuts the drain short.

        If one of the loops fails with anything but a store error (a bug), the
        scheduler drains and stops, and the error is raised: no loop dies silently.
        """
        if self.info is None:
            await self.start()
        await self.observer.open(self.store, self.id)
        self._start_watchdog()
        self.warm.start()
        loops = [
            asyncio.create_task(self._resilient("dispatch", self._dispatch), name="dispatch"),
            asyncio.create_task(self._resilient("supervise", self._supervise), name="supervise"),
            asyncio.create_task(self._resilient("cron", self._cron), name="cron"),
            asyncio.create_task(self._resilient("pools", self.pools.run), name="pools"),
            asyncio.create_task(self._resilient("streams", self.streams.run), name="streams"),
            asyncio.create_task(self._resilient("fleet", self.fleet_scaler.run), name="fleet"),
        ]
        if self.watcher is not None:
            watch = self._resilient("reload", self.watcher.run)
            loops.append(asyncio.create_task(watch, name="reload"))
        if self.bundles is not None:
            follow = self._resilient("bundles", self.bundles.run)
            loops.append(asyncio.create_task(follow, name="bundles"))
        failure: BaseException | None = None
        try:
            failure = await self._until_stopped(stop, loops)
            await self.drain(stop_now or asyncio.Event())
        finally:
            await self._end_loops(loops)
            await self.warm.stop()
            await self._abandon_all("the scheduler stopped")
            with contextlib.suppress(StoreError):
                await self.pools.release()
            with contextlib.suppress(StoreError):
                await self.fleet_scaler.release()
            self.watchdog.close()
            await self.observer.close()
            await self.store.set_scheduler_state(self.id, "stopped")
            log.info("scheduler %s stopped", self.id, extra={"action": "scheduler_stopped"})
        if failure is not None:
            raise failure

    async def _until_stopped(
        self, stop: asyncio.Event, loops: list[asyncio.Task[None]]
    ) -> BaseException | None:
        """Wait for ``stop``, or for a loop to fail; a loop that simply ends is fine."""
        stopper = asyncio.create_task(stop.wait())
        pending: set[asyncio.Task[Any]] = {stopper, *loops}
        try:
            while stopper in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopper}:
                    if not task.cancelled() and task.exception() is not None:
                        log.error(
                            "the %s loop failed; stopping",
                            task.get_name(),
                            exc_info=task.exception(),
                            extra={"action": "loop_failed"},
                        )
                        return task.exception()
            return None
        finally:
            stopper.cancel()

    async def _end_loops(self, loops: list[asyncio.Task[None]]) -> None:
        """Cancel the loops and give them a bounded time to unwind."""
        for task in loops:
            task.cancel()
        ended, stuck = await asyncio.wait(loops, timeout=10.0)
        for task in ended:
            if not task.cancelled():
                task.exception()  # retrieved: it was logged where it happened
        for task in stuck:
            log.error(
                "the %s loop did not stop within 10 s; leaving it",
                task.get_name(),
                extra={"action": "loop_stuck"},
            )

    async def drain(self, stop_now: asyncio.Event) -> None:
        """No new dispatch; running runs get ``drain_grace`` seconds, then they are stopped."""
        self.stopping = True
        self.draining = True
        self.wake()
        await self.store.set_scheduler_state(self.id, "draining")
        pending = set(self._runs.values())
        if pending:
            finished = asyncio.create_task(asyncio.wait(pending))
            cut_short = asyncio.create_task(stop_now.wait())
            await asyncio.wait(
                {finished, cut_short},
                timeout=self.options.drain_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
            finished.cancel()
            cut_short.cancel()
        reason = f"the scheduler shut down (drain grace {self.options.drain_grace:g} s)"
        await self._abandon_all(reason)

    async def _abandon_all(self, reason: str) -> None:
        """Stop every run still going and wait until each is recorded: killed with
        ``reason``, its item queued again for the next scheduler (work interrupted by a
        shutdown is not dropped)."""
        tasks = list(self._runs.values())
        await asyncio.gather(
            *(self.executor.stop(r, reason, requeue=True) for r in list(self._runs))
        )
        if tasks:
            await asyncio.wait(tasks, timeout=self.options.kill_grace * 2 + 5)

    # -- hot reload ------------------------------------------------------------------

    async def reload(self, project: Project) -> ReloadSummary:
        """Run ``project`` (a new configuration of this one) from now on.

        The store learns the agents, scales and limits first (a removed agent is marked
        absent: its queued items stay queued, undispatched, until it comes back); then new
        runs use the new configuration: cron is restarted on the new schedules, webhooks
        and calls see the new agents. Running runs go on with the configuration they
        started with. The store URL and ``[gateway]`` stay those in use (they change at the
        next `corral start`)."""
        summary = summarize(self.project, project)
        weaker = weakened(self.project, project)
        project = keep_running_values(self.project, project)
        await sync_config(self.store, project)
        # Cron starts again only when the schedules changed: a tick due during a restart
        # would be computed from the moment after it, and skipped.
        schedules_changed = _schedules(self.project) != _schedules(project)
        self.project = project
        self.executor.project = project
        self.warm.reload(project)
        if schedules_changed:
            self._cron_changed.set()
        for listener in self.reload_listeners:
            listener(project)
        self.wake()
        log.info(
            "configuration reloaded: %s",
            summary.describe(),
            extra={"action": "config_reloaded"},
        )
        if weaker:
            log.warning(
                "the reload weakens the isolation of %s: applied, as the configuration says",
                ", ".join(weaker),
                extra={"action": "isolation_weakened"},
            )
        if summary.restart_needed:
            log.warning(
                "%s changed: that takes effect at the next `corral start`",
                " and ".join(summary.restart_needed),
                extra={"action": "restart_needed"},
            )
        return summary

    async def _cron(self) -> None:
        """The cron triggers of the current configuration, started again on each reload."""
        while True:
            self._cron_changed.clear()
            ticking = asyncio.create_task(CronTriggers(self.project, self.submit).run())
            changed = asyncio.create_task(self._cron_changed.wait())
            try:
                done, _ = await asyncio.wait(
                    {ticking, changed}, return_when=asyncio.FIRST_COMPLETED
                )
                if ticking in done:
                    ticking.result()  # a failure is raised; an end means no schedules
                    await changed
            finally:
                for task in (ticking, changed):
                    task.cancel()
                await asyncio.gather(ticking, changed, return_exceptions=True)

    # -- loops -------------------------------------------------------------------------

    async def _resilient(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop; when the store fails, say so and retry with backoff.

        Any other exception is a bug: it ends the TaskGroup, and the scheduler stops
        with the traceback instead of running on without one of its loops.
        """
        delay = 0.5
        while True:
            try:
                await loop()
                return
            except StoreError as exc:
                if self.stopping:  # not an upgrade's drain, which waits out store faults
                    raise
                log.error(
                    "%s: the store failed (%s); retrying in %.1f s",
                    name,
                    exc,
                    delay,
                    extra={"action": "store_unavailable", "loop": name},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _dispatch(self) -> None:
        """Claim whenever woken: by this process (an enqueue, a slot freed) or, on
        PostgreSQL, by any process sharing the store (``queue`` notices, store/_notify.py).
        The poll is the fallback: SQLite's other processes, and notices lost while the
        store's listener reconnects. A burst of notices sets one event: one more claim."""
        batch = self.options.claim_batch
        unsubscribe = self.store.changes.subscribe(QUEUE, self.wake)
        try:
            while True:
                self._wake.clear()
                if self.draining:  # no new work; a drain given up (``resume``) takes it again
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.options.poll_interval)
                    continue
                if self.overdue() is not None:  # no new work until a renewal succeeds
                    await asyncio.sleep(self.options.poll_interval)
                    continue
                asked = time.time_ns()
                claims = await self._claim(batch)
                if claims:
                    self.observer.claimed(claims, asked, time.time_ns())
                for claim in claims:
                    self._launch(claim)
                if len(claims) < batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.options.poll_interval)
        finally:
            unsubscribe()

    async def _claim(self, batch: int) -> list[Claim]:
        """Claim up to ``batch`` items; each run's secret hash is stored by the claim
        itself (secrets made ahead by the link), so starting a run writes no secret."""
        agents = local_agents(self.project)
        if agents == []:  # every agent runs on runners: nothing to claim here
            return []
        hashes = self.link.spare_hashes(batch)
        try:
            claims = await self.store.claim(
                self.id,
                lease_seconds=self.options.lease_seconds,
                limit=batch,
                secret_hashes=hashes,
                bundle=self.project.bundle,
                agents=agents,
            )
        except BaseException:
            self.link.claim_failed()
            raise
        self.link.claimed([(c.run.id, c.run.agent, c.run.trigger.value) for c in claims])
        if self.rollout is not None and claims:
            claims = await rollouts.assign(self.store, self.rollout, claims)
        return claims

    def _launch(self, claim: Claim) -> None:
        if self.on_claim is not None:
            self.on_claim(claim)
        run_id = claim.run.id
        task = asyncio.create_task(self._execute(claim), name=f"run {run_id}")
        self._runs[run_id] = task
        self.watchdog.track(run_id)

        def done(_: asyncio.Task[None]) -> None:
            self._runs.pop(run_id, None)
            self.watchdog.untrack(run_id)
            self.wake()  # a slot is free

        task.add_done_callback(done)

    async def _execute(self, claim: Claim) -> None:
        try:
            result = await self.executor.execute(claim)
            self.observer.finished(result.run)
            if self.hooks_to_check(result.run):
                await anomalies.hooks_from_log(
                    self.store, result.run, self.executor.log_path(result.run.id)
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.observer.unrecorded(claim.run, str(exc))
            # Its end could not be recorded (the store failed past every retry). The run
            # leaves ``_runs`` with this task, so its lease is no longer renewed: it lapses
            # and recovery (here or on another scheduler) records it lost and re-delivers it.
            log.exception(
                "run %s ended but its end could not be recorded; its lease will lapse in "
                "%g s and its item will be recovered",
                claim.run.id,
                self.options.lease_seconds,
                extra={"action": "run_crashed", "run_id": claim.run.id},
            )

    async def _evaluate_rollout(self) -> None:
        """Judge the running rollout (scheduler/rollouts.py). A store error goes up (the
        loop retries); anything else is logged and never stops the scheduler."""
        try:
            await rollouts.evaluate(self.store, actor=f"scheduler {self.id}")
        except StoreError:
            raise
        except Exception:
            log.exception(
                "the running rollout could not be evaluated; it runs on until the next look",
                extra={"action": "rollout_failed"},
            )

    def hooks_to_check(self, run: Run) -> bool:
        """Whether a run's log may show a failed hook: a pre hook failed it, or its agent
        has post hooks (a success of an agent without any costs nothing)."""
        if run.state is RunState.FAILED and hook_failure(run.error) is not None:
            return True
        agent = self.project.agents.get(run.agent)
        return agent is not None and bool(agent.config.hooks.post)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        # A loop restarted after a store error renews at once: an error in another query
        # must not push the renewal towards the fencing deadline.
        renewed = loop.time() - self.options.renew_every
        recovered = loop.time()
        pruned = loop.time() - self.options.prune_every  # prune once at start
        while True:
            await asyncio.sleep(self.options.supervise_every)
            await self._fence_if_overdue()
            await self._handle_kill_requests()
            now = loop.time()
            if now - renewed >= self.options.renew_every:
                sent = boottime()
                # Only the runs still executed here: a run whose end could not be recorded
                # is no longer tracked, so its lease lapses and recovery hands it on.
                await self.store.renew_leases(
                    self.id, lease_seconds=self.options.lease_seconds, run_ids=set(self._runs)
                )
                self._renewed(sent)
                renewed = now
            if now - recovered >= self.options.recover_every:
                await self._recover_lapsed()
                await self._check_runners()
                await self._evaluate_rollout()
                recovered = now
            if now - pruned >= self.options.prune_every:
                await prune_history(self.project, self.store)
                pruned = now

    # -- self-fencing --------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        """Start the watchdog; until the first renewal, runs are covered by their claims
        (every claim is sent after this moment)."""
        self.fence_deadline = fence_deadline(boottime(), self.options.lease_seconds)
        self.watchdog.deadline = self.fence_deadline
        self.watchdog.start()
        log.info(
            "runs are contained by %s; self-fencing watchdog pid %s",
            self.watchdog.support.describe(),
            self.watchdog.pid,
            extra={"action": "watchdog_started"},
        )

    def _renewed(self, sent: float) -> None:
        """A renewal sent at ``sent`` succeeded: the runs may go on until the new deadline.

        A renewal that comes back after the deadline passed is too late for the runs of
        the moment: the watchdog has killed their processes, so they are handed back
        (``fence_off``), never recorded with the outcome of a killed process."""
        late = self.overdue()
        if late is not None:
            for run_id in list(self._runs):
                self.executor.mark_fenced(run_id, late)
        self.fence_deadline = max(
            self.fence_deadline, fence_deadline(sent, self.options.lease_seconds)
        )
        self.watchdog.ensure()
        self.watchdog.set_deadline(self.fence_deadline)

    def overdue(self) -> str | None:
        """Why this scheduler's runs must stop (its leases may lapse), or None."""
        late = boottime() - self.fence_deadline
        if self.fence_deadline == 0.0 or late < 0:
            return None
        return (
            f"self-fenced: scheduler {self.info.id if self.info else '?'} could not renew "
            f"its leases in time ({late:.1f} s past its fencing deadline, lease "
            f"{self.options.lease_seconds:g} s), so it stopped the run before the lease "
            "could lapse"
        )

    async def _fence_if_overdue(self) -> None:
        """Stop every run when the renewal is overdue (the watchdog has normally done it
        already): they are handed back, not finalised as if nothing happened."""
        self.watchdog.ensure()
        reason = self.overdue()
        if reason is None or not self._runs:
            return
        log.error(
            "lease renewal overdue: stopping %d run(s) (%s)",
            len(self._runs),
            reason,
            extra={"action": "self_fenced"},
        )
        await asyncio.gather(*(self.executor.fence_off(r, reason) for r in list(self._runs)))

    async def _handle_kill_requests(self) -> None:
        for run in await self.store.kill_requests(self.id):
            if run.id in self._stopping or run.id not in self._runs:
                continue
            self._stopping[run.id] = asyncio.create_task(self._stop_for_operator(run.id))

    async def _stop_for_operator(self, run_id: str) -> None:
        try:
            await self.executor.stop(run_id, "killed by an operator")
        finally:
            self._stopping.pop(run_id, None)

    async def _recover_lapsed(self) -> None:
        recovered = await self.store.recover_lapsed()
        if recovered:
            reap_orphans(recovered)
            self.wake()
        # Task claims whose heartbeat lease lapsed go back to the board (a run's claims
        # also end with the run, in the transaction that ends it).
        stalled = await self.store.release_stalled_tasks()
        for task in stalled:
            log.info(
                "task %s of project %s is open again: its claim (token %s) lapsed",
                task.id,
                task.project,
                task.token,
                extra={"action": "task_stalled", "task": task.id, "project": task.project},
            )

    async def _check_runners(self) -> None:
        """Mark the fleet's runners that stopped heartbeating offline (an anomaly each,
        once per outage, whichever control plane process looks first)."""
        offline_after = float(self.project.config.fleet.offline_after_seconds)
        gone = await self.store.mark_offline_runners(offline_after)
        if gone:
            await self._runners_offline(gone)
        # Stuck runs and expired locks, here's and the runners' (docs/fleet.md).
        await anomalies.sweep(self.store, self.project, kill_grace=self.options.kill_grace)

    async def _runners_offline(self, gone: list[Runner]) -> None:
        """Runners this process found offline. Their runs need nothing here: their
        leases (12 s) lapse and ``_recover_lapsed`` records them lost and re-queues them."""
        for runner in gone:
            log.warning(
                "runner %s (%s on %s) is offline: no heartbeat since %s",
                runner.id,
                runner.name,
                runner.hostname,
                runner.last_heartbeat_at.isoformat(),
                extra={"action": "runner_offline", "runner_id": runner.id},
            )

    async def _recover_dead_predecessors(self, host: str) -> None:
        now = datetime.now(UTC)
        for info in await self.store.list_schedulers():
            if info.host != host or info.state == "stopped" or _pid_alive(info.pid):
                continue
            reason = f"its scheduler {info.id} died (pid {info.pid} on {host} is gone)"
            recovered = await self.store.release_owner(info.id, reason=reason)
            reap_orphans(recovered)
            await self.store.set_scheduler_state(info.id, "stopped")
            log.warning(
                "recovered %d run(s) of dead scheduler %s",
                len(recovered),
                info.id,
                extra={"action": "scheduler_recovered", "since": str(now - info.heartbeat_at)},
            )


def local_agents(project: Project) -> list[str] | None:
    """The agents this process's dispatcher claims for: None (every one) unless some run
    on the fleet's runners only (``runsOn``), whose items only runners claim; none at all
    under ``[fleet] runLocally = false`` (every run waits for a runner)."""
    if not project.config.fleet.run_locally:
        return []
    if all(agent.config.runs_on is None for agent in project.agents.values()):
        return None
    return sorted(n for n, agent in project.agents.items() if agent.config.runs_on is None)


def _schedules(project: Project) -> dict[str, str]:
    """The cron schedules ``project`` runs (its enabled agents')."""
    return {
        name: agent.config.schedule
        for name, agent in project.agents.items()
        if agent.config.schedule and agent.enabled
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
