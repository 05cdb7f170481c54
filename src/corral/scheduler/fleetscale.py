"""Sizing the runner fleet itself (``[fleet.autoscale]``): the fleet autoscaler.

One scheduler decides at a time: the one holding the fleet autoscaler's lease in the
store (migration 0027), taken or renewed at every tick as the pools' leases are
(scheduler/pools.py). A tick reads the runners it started (its members), their busy
slots, and the runs waiting for a runner with its labels, lets the autoscale package's
policy decide in slots (utilisation = busy slots / slots, the queue the runs waiting),
turns the decision into runners (``ceil(slots / slotsPerRunner)``, within min and max,
``maxRunners`` and the project's ``scale`` cap), and records it with its inputs in the
pool decision log under ``:fleet`` (`corral scale log`).

Growing mints a single-use activation token per runner (with the configured labels) and
asks the provider to start a runner with it, in the background; a runner that has not
joined within ``joinTimeout`` is recorded as failed, its token revoked and the
provider's stop called. A failed start is recorded and retried after a backoff (2, 4,
... 60 s). Shrinking drains idle runners, oldest first (the fleet's drain: they take no
new work); a draining runner is stopped (provider stop, then revoked) only once a
reading shows it with no live run, and no sooner than one long poll for work (25 s)
after it was drained (a request for work it had open then may still have claimed a run
through it), so a busy runner is never stopped.

After a restart, the new decider finds the members in the store: a ``local`` member
whose process still runs on this host (its pid, with its own config on the command
line) is kept; one whose process is gone is recorded as failed and its runner revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from corral.autoscale import Autoscaler, Instance, Limits, Observation, Settings
from corral.errors import StoreError
from corral.project import Project
from corral.project._models import FleetAutoscaleConfig
from corral.scheduler.fleet_providers import (
    CommandProvider,
    LocalProvider,
    Provider,
    ProviderError,
    StartSpec,
)
from corral.store import FleetDemand, FleetMember, Runner, RunnerState, Store

#: The longest a runner's request for work waits (the engine's ``fleet_runs.MAX_WAIT``,
#: which this layer may not import; a test keeps the two equal): a drained runner is
#: stopped only after one such wait has passed.
LONG_POLL_SECONDS = 25.0

__all__ = ["ACTOR", "FleetScaler", "fleet_settings", "served_agents"]

log = logging.getLogger("corral.scheduler.fleetscale")

#: Who the audit log names for the autoscaler's drains and revocations.
ACTOR = "fleet-autoscaler"
_BACKOFF_MAX = 60.0


def fleet_settings(config: FleetAutoscaleConfig) -> Settings:
    """The autoscale package's settings, in slots."""
    spr = config.slots_per_runner
    return Settings(
        min=config.min * spr,
        max=config.max * spr,
        target=config.target,
        scale_up=config.scale_up,
        scale_down=config.scale_down,
        stabilization=float(config.stabilization),
        window=float(config.window),
        policy=config.policy,
    )


def served_agents(project: Project, labels: tuple[str, ...]) -> list[str]:
    """The agents a runner with ``labels`` may run (as the fleet routes them)."""
    have = set(labels)
    found = []
    for name, agent in project.agents.items():
        need = agent.config.runs_on
        if need is None and project.config.fleet.run_locally:
            continue
        if set(need or ()) <= have:
            found.append(name)
    return sorted(found)


def _token() -> tuple[str, str]:
    token = "cft_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class _State:
    config: FleetAutoscaleConfig
    scaler: Autoscaler
    provider: Provider
    recorded: float
    recovered: bool = False
    failures: int = 0
    #: The (runners, desired) of the last decision recorded.
    last: tuple[int, int] = (-1, -1)
    retry_at: float = 0.0
    starting: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    stopping: set[str] = field(default_factory=set)
    #: When (loop time) each draining runner was drained, or first seen draining.
    drained_at: dict[str, float] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class FleetScaler:
    """One scheduler's part in sizing the runner fleet: ``run()`` until cancelled."""

    def __init__(
        self,
        store: Store,
        owner: Callable[[], str],
        project: Callable[[], Project],
        url: Callable[[], str | None],
        *,
        tick: float = 1.0,
        lease_seconds: float = 10.0,
        hold_every: float = 60.0,
        drain_grace: float = LONG_POLL_SECONDS + 1.0,
    ) -> None:
        self.store = store
        self.owner = owner
        self.project = project
        self.url = url
        self.tick_every = tick
        self.lease_seconds = lease_seconds
        self.hold_every = hold_every
        #: How long a drained runner is left before it is stopped: its open request for
        #: work (a long poll, at most LONG_POLL_SECONDS) may still claim a run through it.
        self.drain_grace = drain_grace
        self.host = socket.gethostname()
        self._state: _State | None = None
        self._wake = asyncio.Event()
        #: The last decision's figures, for /metrics.
        self.last: dict[str, float] = {}

    def wake(self) -> None:
        self._wake.set()

    @property
    def holding(self) -> bool:
        return self._state is not None

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("fleet autoscaler: the store failed (%s); next tick", exc)
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=self.tick_every)
            finally:
                waiter.cancel()
            await asyncio.sleep(0.2)  # at most five ticks a second, however often woken

    async def release(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            for task in state.starting.values():
                task.cancel()
        await self.store.release_fleet_scaler_lease(self.owner())

    def _provider(self, config: FleetAutoscaleConfig) -> Provider:
        root = self.project().root
        if config.provider == "local":
            return LocalProvider(root, timeout=float(config.join_timeout))
        assert config.start is not None and config.stop is not None  # validated
        return CommandProvider(
            root, config.start, config.stop, timeout=float(config.command_timeout)
        )

    async def tick(self) -> None:
        """One decision, if this scheduler holds the fleet autoscaler's lease."""
        config = self.project().config.fleet.autoscale
        if config is None:
            if self._state is not None:
                await self.release()
            return
        owner = self.owner()
        if not await self.store.take_fleet_scaler_lease(owner, lease_seconds=self.lease_seconds):
            self._state = None
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        state = self._state
        if state is None or state.config != config:
            provider = (
                state.provider if state and state.config.provider == config.provider else None
            )
            state = _State(
                config=config,
                scaler=Autoscaler(fleet_settings(config)),
                provider=provider or self._provider(config),
                recorded=now - self.hold_every,
                recovered=state.recovered if state else False,
                starting=state.starting if state else {},
                stopping=state.stopping if state else set(),
                drained_at=state.drained_at if state else {},
                tasks=state.tasks if state else set(),
            )
            self._state = state
        if not state.recovered:
            await self._recover(state)
            state.recovered = True
        await self._decide(state, config, now)

    async def _recover(self, state: _State) -> None:
        """The members a previous decider left: keep those that live, close the rest."""
        for member in await self.store.fleet_members(live_only=True):
            if member.provider != state.provider.name or member.name in state.starting:
                continue
            if member.provider == "local" and member.host != self.host:
                continue  # another host's processes: that host's scheduler sees them
            alive = state.provider.alive(member.name, member.handle)
            if alive is False:
                await self._close(member, "failed", "its runner process was gone after a restart")
            else:
                log.info("fleet autoscaler: found runner %s again", member.name)

    async def _close(self, member: FleetMember, outcome: str, detail: str) -> None:
        """Record ``member`` as ended (stopped or failed) and revoke its runner/token."""
        await self.store.update_fleet_member(member.name, state=outcome, detail=detail)
        if member.runner_id is not None:
            try:
                await self.store.set_runner_state(
                    member.runner_id, RunnerState.REVOKED, actor=ACTOR
                )
            except StoreError as exc:
                log.warning("fleet autoscaler: could not revoke %s: %s", member.runner_id, exc)
        elif member.token_id is not None:
            await self.store.revoke_fleet_token(member.token_id, actor=ACTOR)

    async def _decide(self, state: _State, config: FleetAutoscaleConfig, now: float) -> None:
        runners = await self.store.list_runners()
        demand = await self.store.fleet_demand()
        busy = demand.busy
        wall = self.store.now()
        notes: list[str] = []
        live = await self._reconcile(state, config, runners, wall, now, notes)
        # the lease again right before acting: another scheduler may decide now
        if not await self.store.take_fleet_scaler_lease(
            self.owner(), lease_seconds=self.lease_seconds
        ):
            self._state = None
            return
        self._stop_drained(state, live, busy, now)
        spr = config.slots_per_runner
        served = served_agents(self.project(), config.labels)
        # only runs that may start now are demand: not those of paused or disabled
        # agents, nor those a daily cost cap holds back (they would fail at once)
        queued = sum(demand.queued.get(a, 0) for a in served)
        serving = [m for m in live if m.state in ("starting", "active")]
        instances, busy_slots = _instances(serving, busy, spr, wall, now)
        mine = {m.runner_id for m in live} | {m.token_id for m in live}
        others = [
            r
            for r in runners
            if r.state is not RunnerState.REVOKED and r.id not in mine and r.token_id not in mine
        ]
        cap_runners, slots_cap = self._caps(len(others), spr)
        limits = Limits(slots=slots_cap, budget_stop=demand.budget_stop)
        decision = state.scaler.decide(
            Observation(now=now, queued=queued, instances=tuple(instances), limits=limits)
        )
        size = len(serving)
        desired = max(min(math.ceil(decision.desired / spr), config.max), config.min)
        if cap_runners is not None:
            desired = min(desired, cap_runners)
        started: list[str] = []
        drained: list[str] = []
        waiting = now < state.retry_at
        if desired > size and not waiting:
            started = await self._grow(state, config, desired - size, notes)
        elif desired < size:
            drained = await self._drain(state, serving, busy, size - desired, notes)
        reason = decision.reason
        if waiting and desired > size:
            reason += f"; start retried in {state.retry_at - now:.0f} s (last start failed)"
        if len(drained) < size - desired:
            reason += f"; {size - desired - len(drained)} busy runner(s) kept"
        held_reason, held_inputs = _held(demand, served)
        reason += held_reason
        inputs: dict[str, Any] = dict(decision.inputs)
        inputs.update(
            runners=size,
            slots_per_runner=spr,
            busy_slots=busy_slots,
            slots=size * spr,
            queued=queued,
            draining=sum(1 for m in live if m.state == "draining"),
            other_runners=len(others),
            provider=config.provider,
            **held_inputs,
        )
        for key, names in (("started", started), ("drained", drained), ("notes", notes)):
            if names:
                inputs[key] = "; ".join(names)
        self.last = {k: float(inputs[k]) for k in ("runners", "busy_slots", "slots", "queued")}
        self.last["desired"] = float(desired)
        changed = bool(started or drained or notes) or (size, desired) != state.last
        if changed or now - state.recorded >= self.hold_every:
            await self.store.record_fleet_decision(
                self.owner(),
                size=size,
                desired=desired,
                policy=config.policy,
                reason=reason,
                inputs=inputs,
            )
            state.recorded = now
            state.last = (size, desired)
        if started or drained:
            log.info(
                "fleet: %d -> %d runners (%s)",
                size,
                desired,
                reason,
                extra={"action": "fleet_resized"},
            )

    def _stop_drained(
        self, state: _State, live: list[FleetMember], busy: dict[str, int], now: float
    ) -> None:
        """Stop the draining runners this reading shows with no live run, once a long
        poll for work has passed since they were drained."""
        for m in live:
            if m.state == "draining" and m.name not in state.stopping:
                since = state.drained_at.setdefault(m.name, now)
                if now - since < self.drain_grace:
                    continue
                if m.runner_id is None or busy.get(m.runner_id, 0) == 0:
                    state.stopping.add(m.name)
                    self._background(state, self._stop(state, m))

    def _caps(self, others: int, spr: int) -> tuple[int | None, int | None]:
        """The most runners ``maxRunners`` leaves this autoscaler (others count), and
        the most slots that and the project's ``scale`` cap allow."""
        config = self.project().config
        cap_runners = None
        if config.max_runners is not None:
            cap_runners = max(config.max_runners - others, 0)
        slots_cap = None if cap_runners is None else cap_runners * spr
        if config.scale is not None:
            slots_cap = config.scale if slots_cap is None else min(slots_cap, config.scale)
        return cap_runners, slots_cap

    async def _reconcile(
        self,
        state: _State,
        config: FleetAutoscaleConfig,
        runners: list[Runner],
        wall: datetime,
        now: float,
        notes: list[str],
    ) -> list[FleetMember]:
        """The live members after this reading: joins recorded, runners that did not
        join in time failed, runners revoked or whose process exited closed."""
        by_token = {r.token_id: r for r in runners if r.token_id is not None}
        by_id = {r.id: r for r in runners}
        live: list[FleetMember] = []
        for m in await self.store.fleet_members(live_only=True):
            if m.name in state.starting or m.name in state.stopping:
                live.append(m)
            elif m.state == "starting":
                joined = by_token.get(m.token_id or "")
                if joined is not None:
                    await self.store.update_fleet_member(
                        m.name, state="active", runner_id=joined.id
                    )
                    live.append(replace(m, state="active", runner_id=joined.id))
                elif (wall - m.started_at).total_seconds() > config.join_timeout:
                    why = f"did not join within {config.join_timeout} s"
                    await self._fail(state, m, why, now)
                    notes.append(f"{m.name} {why}")
                else:
                    live.append(m)
            elif m.runner_id is not None and (
                (runner := by_id.get(m.runner_id)) is None or runner.state is RunnerState.REVOKED
            ):
                await self.store.update_fleet_member(
                    m.name, state="stopped", detail="its runner was revoked"
                )
                self._background(state, self._stop_quietly(state, m))
            elif m.host == self.host and state.provider.alive(m.name, m.handle) is False:
                await self._close(m, "failed", "its runner process exited")
                notes.append(f"{m.name}'s process exited")
            else:
                live.append(m)
        return live

    async def _grow(
        self, state: _State, config: FleetAutoscaleConfig, count: int, notes: list[str]
    ) -> list[str]:
        url = config.url or self.url()
        if url is None:
            notes.append("no URL for runners to join at; set [fleet.autoscale] url")
            return []
        return [await self._start(state, config, url) for _ in range(count)]

    async def _drain(
        self,
        state: _State,
        serving: list[FleetMember],
        busy: dict[str, int],
        count: int,
        notes: list[str],
    ) -> list[str]:
        """Drain up to ``count`` idle runners, oldest first; their names."""
        idle = [
            m
            for m in serving
            if m.state == "active" and m.runner_id is not None and busy.get(m.runner_id, 0) == 0
        ]
        idle.sort(key=lambda m: (m.started_at, m.name))
        drained = []
        for m in idle[:count]:
            try:
                await self.store.set_runner_state(
                    m.runner_id or "", RunnerState.DRAINING, actor=ACTOR
                )
            except StoreError as exc:
                notes.append(f"could not drain {m.name}: {exc}")
                continue
            await self.store.update_fleet_member(m.name, state="draining")
            drained.append(m.name)
            state.drained_at[m.name] = asyncio.get_running_loop().time()
        return drained

    async def _start(self, state: _State, config: FleetAutoscaleConfig, url: str) -> str:
        name = f"auto-{secrets.token_hex(4)}"
        token, token_hash = _token()
        made = await self.store.create_fleet_token(
            token_hash,
            ttl=timedelta(seconds=config.join_timeout + 60),
            labels=tuple(config.labels),
            note=f"fleet autoscaler: runner {name}",
            actor=ACTOR,
        )
        member = await self.store.add_fleet_member(
            name, provider=config.provider, host=self.host, token_id=made.id
        )
        spec = StartSpec(name, url, token, tuple(config.labels), config.slots_per_runner)
        state.starting[name] = asyncio.create_task(self._starting(state, member, spec))
        return name

    async def _starting(self, state: _State, member: FleetMember, spec: StartSpec) -> None:
        loop = asyncio.get_running_loop()
        try:
            handle = await state.provider.start(spec)
        except ProviderError as exc:
            await self._fail(state, member, str(exc), loop.time())
            await self.store.record_fleet_decision(
                self.owner(),
                size=int(self.last.get("runners", 0)),
                desired=int(self.last.get("desired", 0)),
                policy=state.config.policy,
                reason=f"start of {member.name} failed: {exc}",
                inputs={"failed": member.name, "error": str(exc)[:600]},
            )
            return
        except Exception:
            log.exception("fleet autoscaler: starting %s failed", member.name)
            await self._fail(state, member, "the provider failed (see the log)", loop.time())
            return
        finally:
            state.starting.pop(member.name, None)
        state.failures = 0
        await self.store.update_fleet_member(member.name, state="starting", handle=handle)
        self.wake()

    async def _fail(self, state: _State, member: FleetMember, why: str, now: float) -> None:
        state.failures += 1
        delay = min(2.0**state.failures, _BACKOFF_MAX)
        state.retry_at = now + delay
        log.warning(
            "fleet autoscaler: runner %s failed: %s (next start in %g s)",
            member.name,
            why,
            delay,
            extra={"action": "fleet_runner_failed"},
        )
        await self._close(member, "failed", why)
        self._background(state, self._stop_quietly(state, member))

    @staticmethod
    def _background(state: _State, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a provider's stop: up to its timeout) off the tick, which must
        stay well within the lease."""
        task = asyncio.create_task(work)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    async def _stop_quietly(self, state: _State, member: FleetMember) -> None:
        try:
            await state.provider.stop(member.name, member.handle, member.runner_id)
        except ProviderError as exc:
            log.warning("fleet autoscaler: stopping %s failed: %s", member.name, exc)

    async def _stop(self, state: _State, member: FleetMember) -> None:
        try:
            if member.provider == "local" and member.host != self.host:
                await self._close(member, "failed", f"runs on host {member.host}; stop it there")
                return
            try:
                await state.provider.stop(member.name, member.handle, member.runner_id)
            except ProviderError as exc:
                log.warning("fleet autoscaler: stopping %s failed: %s", member.name, exc)
                await self.store.record_fleet_decision(
                    self.owner(),
                    size=0,
                    desired=0,
                    policy=state.config.policy,
                    reason=f"stop of {member.name} failed: {exc}",
                    inputs={"failed": member.name, "error": str(exc)[:600]},
                )
                return  # still draining: tried again next tick
            await self._close(member, "stopped", "drained and stopped")
            state.drained_at.pop(member.name, None)
            log.info("fleet autoscaler: stopped runner %s", member.name)
        except StoreError as exc:
            log.warning("fleet autoscaler: stopping %s: the store failed: %s", member.name, exc)
        finally:
            state.stopping.discard(member.name)


def _held(demand: FleetDemand, served: list[str]) -> tuple[str, dict[str, Any]]:
    """What the decision records of the runs waiting that may not start now (not
    counted as demand): a note for its reason, and its inputs (``held``, ``budget_held``,
    ``budget``: the daily caps' words, ``held_agents``: each agent's count and why)."""
    held = {a: h for a, h in demand.held.items() if a in served}
    by_budget = demand.held_by_budget(served)
    budget_held = sum(n for n, _ in by_budget.values())
    inputs: dict[str, Any] = {
        "held": sum(n for n, _ in held.values()),
        "budget_held": budget_held,
    }
    budget = demand.stop if demand.budget_stop else None
    if budget is None and by_budget:
        budget = "; ".join(f"{a}: {why}" for a, (_, why) in sorted(by_budget.items()))
    if budget is not None:
        inputs["budget"] = budget[:600]
    if held:
        listed = "; ".join(f"{a}: {n} ({why})" for a, (n, why) in sorted(held.items()))
        inputs["held_agents"] = listed[:600]
    note = ""
    if budget_held:
        note = f"; {budget_held} run(s) held by a daily budget"
    elif demand.budget_stop:
        note = "; the project's daily budget is spent"
    return note, inputs


def _instances(
    serving: list[FleetMember], busy: dict[str, int], spr: int, wall: datetime, now: float
) -> tuple[list[Instance], int]:
    """The serving runners as the policy reads them, in slots: a starting runner's
    slots warming, an active one's busy (its live runs) or idle; and the busy slots."""
    instances: list[Instance] = []
    busy_slots = 0
    for m in serving:
        started = now - (wall - m.started_at).total_seconds()
        if m.state == "starting" or m.runner_id is None:
            instances += [Instance(f"{m.name}/{i}", "warming", started) for i in range(spr)]
            continue
        n = min(busy.get(m.runner_id, 0), spr)
        busy_slots += n
        instances += [
            Instance(f"{m.name}/{i}", "busy" if i < n else "idle", started) for i in range(spr)
        ]
    return instances, busy_slots
