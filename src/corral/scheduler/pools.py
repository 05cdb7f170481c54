"""Sizing agents' pools: the autoscaler (corral.autoscale) fed from the store.

Every agent with a ``[scale]`` table has a pool size in the store (migration 0022) that
every claim reads: at most ``min(max, size)`` of its runs go at once, on any process.
One scheduler decides each pool's size: the one holding the pool's lease, taken or
renewed at every tick (``Store.take_pool_lease``); the others keep no autoscaler for it.
The holder ticks once a second, and sooner when the dispatcher is woken (an item queued,
a run ended), at most ``min_gap`` apart. A tick reads the agent's queue, its live runs
(the pool's busy instances), what arrived and ended since the previous tick and the
limits (the project cap's room, the daily budgets, and for an agent that runs on the
fleet's runners the slots they have free for it), lets the agent's ``Autoscaler``
decide, and writes the decided size with, when it changed (or every ``hold_every``
seconds when it did not), the decision and its inputs.

Instances here are slots, not processes: a pool of 4 with 1 run going has 1 busy and 3
idle instances, and an idle instance costs nothing (warm instances, kept prepared
between runs, are not built). Shrinking only lowers the bound for new claims: a run
going on when its pool shrinks below it finishes as it would have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from corral.autoscale import Autoscaler, Instance, Limits, Observation, Settings, settings_for
from corral.llm.ratelimit import limits_for
from corral.project import Project, ScaleConfig
from corral.store import FleetDemand, PoolSnapshot, PoolState, Runner, RunnerState, Store

__all__ = ["PoolSizer", "pooled_agents"]

log = logging.getLogger("corral.scheduler.pools")


def pooled_agents(project: Project) -> dict[str, Settings]:
    """The agents whose pools the autoscaler sizes (a ``[scale]`` table), with settings."""
    return {
        name: settings_for(agent.config.scale)
        for name, agent in project.agents.items()
        if isinstance(agent.config.scale, ScaleConfig)
    }


@dataclass
class _Pool:
    settings: Settings
    scaler: Autoscaler
    since: datetime
    recorded: float  # loop time of the last recorded decision


class PoolSizer:
    """One scheduler's part in sizing pools: ``run()`` until cancelled."""

    def __init__(
        self,
        store: Store,
        owner: Callable[[], str],
        project: Callable[[], Project],
        *,
        tick: float = 1.0,
        min_gap: float = 0.2,
        lease_seconds: float = 10.0,
        hold_every: float = 60.0,
        on_grown: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.project = project
        self.tick_every = tick
        self.min_gap = min_gap
        self.lease_seconds = lease_seconds
        self.hold_every = hold_every
        #: Called when a pool grew: its new room is claimable at once.
        self.on_grown = on_grown
        self._pools: dict[str, _Pool] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Work may have arrived or ended: tick soon (at most every ``min_gap``)."""
        self._wake.set()

    @property
    def held(self) -> frozenset[str]:
        """The agents whose pools this scheduler decides now."""
        return frozenset(self._pools)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            started = loop.time()
            await self.tick_all()
            elapsed = loop.time() - started
            await asyncio.sleep(max(self.min_gap - elapsed, 0.0))
            # asyncio.wait, not wait_for: on Python 3.11 a wait_for whose event is set as
            # the task is cancelled returns and drops the cancellation (the loop would
            # outlive the scheduler's shutdown: a drain wakes it, then cancels it).
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=max(self.tick_every - elapsed, 0.0))
            finally:
                waiter.cancel()

    async def release(self) -> None:
        """Give up this scheduler's pools (it stops): another takes them at once."""
        self._pools.clear()
        await self.store.release_pool_leases(self.owner())

    async def tick_all(self) -> None:
        project = self.project()
        wanted = pooled_agents(project)
        for gone in set(self._pools) - set(wanted):
            del self._pools[gone]
        saturated = await self.saturated_providers(project) if wanted else {}
        fleet = None
        if any(runner_labels(project, a) is not None for a in wanted):
            fleet = (await self.store.list_runners(), await self.store.fleet_demand())
        for agent, settings in sorted(wanted.items()):
            capacity = None
            labels = runner_labels(project, agent)
            if fleet is not None and labels is not None:
                offline_after = float(project.config.fleet.offline_after_seconds)
                capacity = fleet_capacity(
                    agent, labels, *fleet, now=self.store.now(), offline_after=offline_after
                )
            await self.tick(agent, settings, _provider_stop(project, agent, saturated), capacity)

    async def saturated_providers(self, project: Project) -> dict[str, str]:
        """The providers with a ``[providers.<name>]`` table that cannot feed more runs
        now (any of their keys' buckets throttled, waited for, or slowed), and why."""
        if not project.config.providers:
            return {}
        out: dict[str, str] = {}
        limits = {name: limits_for(c) for name, c in project.config.providers.items()}
        for bucket in await self.store.provider_buckets(limits):
            why = bucket.saturated
            if why is not None and bucket.provider in project.config.providers:
                out.setdefault(bucket.provider, f"{bucket.provider} {why}")
        return out

    async def tick(
        self,
        agent: str,
        settings: Settings,
        provider_stop: str | None = None,
        capacity: Capacity | None = None,
    ) -> int | None:
        """One decision for ``agent``'s pool if this scheduler holds its lease: the size
        now in force, or None (another scheduler decides it). ``capacity``: the runners'
        slots the pool may use, for an agent that runs on the fleet's runners."""
        owner = self.owner()
        pool = await self.store.take_pool_lease(agent, owner, lease_seconds=self.lease_seconds)
        if pool is None:
            self._pools.pop(agent, None)  # its history starts again if it comes back here
            return None
        loop_now = asyncio.get_running_loop().time()
        wall_now = self.store.now()
        state = self._pools.get(agent)
        if state is None or state.settings != settings:
            since = wall_now - timedelta(seconds=self.tick_every)
            state = _Pool(settings, Autoscaler(settings), since, loop_now - self.hold_every)
            self._pools[agent] = state
        snapshot = await self.store.observe_pool(agent, state.since, wall_now)
        state.since = wall_now
        slots = None if capacity is None else capacity.slots
        observation = _observation(loop_now, wall_now, pool, snapshot, provider_stop, slots)
        decision = state.scaler.decide(observation)
        record = decision.desired != pool.size or loop_now - state.recorded >= self.hold_every
        inputs = dict(decision.inputs)
        inputs.update(
            arrivals=observation.arrivals,
            completions=observation.completions,
            running=pool.running,
            pool=pool.size,
        )
        if snapshot.budget_stop is not None:
            inputs["budget"] = snapshot.budget_stop
        if capacity is not None:
            inputs.update(runners=capacity.runners, runner_slots=capacity.total)
        reason = decision.reason
        stable = decision.inputs["stabilized"]
        if capacity is not None and isinstance(stable, int) and decision.desired < stable:
            if decision.desired == capacity.slots:
                reason += f" (fleet: {capacity.slots} runner slot(s) for it)"
        size = await self.store.set_pool_size(
            agent,
            owner,
            size=decision.desired,
            previous=pool.size,
            policy=settings.policy,
            reason=reason,
            inputs=inputs,
            record=record,
        )
        if size is None:
            self._pools.pop(agent, None)
            return None
        if record:
            state.recorded = loop_now
        if size > pool.size and self.on_grown is not None:
            self.on_grown()
        if size != pool.size:
            log.info(
                "pool of %s: %d -> %d (%s)",
                agent,
                pool.size,
                size,
                decision.reason,
                extra={"action": "pool_resized", "agent": agent},
            )
        return size


@dataclass(frozen=True)
class Capacity:
    """The fleet's room for one agent that runs on runners."""

    #: The slots its pool may use: the free slots of the runners that may take its runs
    #: (active, online, with its ``runsOn`` labels), and the slots its own runs hold on
    #: any runner.
    slots: int
    #: The runners that may take its runs now ...
    runners: int
    #: ... and their slots, busy or not.
    total: int


def runner_labels(project: Project, agent: str) -> tuple[str, ...] | None:
    """The labels a runner needs to run ``agent``; None: it runs on the control plane
    (as the fleet routes it: ``runsOn``, or any runner under ``[fleet] runLocally =
    false``)."""
    found = project.agents.get(agent)
    if found is None:
        return None
    if found.config.runs_on is not None:
        return tuple(found.config.runs_on)
    return None if project.config.fleet.run_locally else ()


def fleet_capacity(
    agent: str,
    labels: tuple[str, ...],
    runners: list[Runner],
    demand: FleetDemand,
    *,
    now: datetime,
    offline_after: float,
) -> Capacity:
    """The runners' slots ``agent``'s pool may use (``Limits.slots``): each runner that
    may take its runs counts its slots less the other agents' live runs on it; its own
    live runs count wherever they are (a draining runner's included: they are instances
    of the pool)."""
    need = set(labels)
    slots = runners_now = total = 0
    for runner in runners:
        mine = demand.busy_by_agent.get(runner.id, {}).get(agent, 0)
        takes = (
            runner.state is RunnerState.ACTIVE
            and runner.online(now, offline_after)
            and need <= set(runner.labels)
        )
        if not takes:
            slots += mine
            continue
        runners_now += 1
        total += runner.slots
        others = demand.busy.get(runner.id, 0) - mine
        slots += max(runner.slots - others, mine, 0)
    return Capacity(slots=slots, runners=runners_now, total=total)


def _provider_stop(project: Project, agent: str, saturated: dict[str, str]) -> str | None:
    """Why ``agent``'s pool must not grow for its models' providers, or None; only the
    built-in harness's runs call the models from corral."""
    found = project.agents.get(agent)
    if not saturated or found is None or found.config.harness.type != "builtin":
        return None
    for name in found.config.models:
        model = project.config.models.get(name)
        if model is not None and model.provider in saturated:
            return saturated[model.provider]
    return None


def _observation(
    now: float,
    wall_now: datetime,
    pool: PoolState,
    snapshot: PoolSnapshot,
    provider_stop: str | None = None,
    slots: int | None = None,
) -> Observation:
    """The pool as the autoscaler reads it: the live runs busy, the rest of the stored
    size idle slots (no process behind them), the limits from the store."""
    instances = [
        Instance(run_id, "busy", now - (wall_now - claimed).total_seconds())
        for run_id, claimed in snapshot.busy
    ]
    instances += [
        Instance(f"slot-{i}", "idle", now) for i in range(max(pool.size - len(instances), 0))
    ]
    return Observation(
        now=now,
        queued=pool.queued,
        instances=tuple(instances),
        arrivals=snapshot.arrivals,
        completions=len(snapshot.durations),
        durations=snapshot.durations,
        limits=Limits(
            cap=snapshot.cap_room,
            budget_stop=snapshot.budget_stop is not None,
            provider_stop=provider_stop,
            slots=slots,
        ),
    )
