"""/metrics: the fleet in Prometheus's text format.

Two kinds of numbers, with different scopes (docs/operating.md lists them):

- **Fleet-wide, read from the store at scrape time** (``FleetMetrics``): the gauges
  ``corral_queue_depth``, ``corral_running`` and ``corral_agent_scale`` (the store's state
  now), and the counters ``corral_runs_total``, ``corral_tokens_total``,
  ``corral_cost_usd_total``, ``corral_items_dropped_total``, ``corral_items_rejected_total``
  and the histogram ``corral_dispatch_latency_seconds``. The counters count events the
  store recorded since this gateway started: each scrape reads the runs that started or
  ended and the items set aside since the previous one (a window that overlaps it, each
  event counted once by id), so every gateway sharing a store reports the same rates
  whichever scheduler ran the run, and pruning old history never makes a counter go down.
  Aggregate them across gateways with ``max``, not ``sum``.
- **The fleet, read at scrape time**: ``corral_fleet_runners{state}`` (online and offline
  for active runners; cordoned, draining, revoked), ``corral_fleet_online_ratio`` and
  ``corral_fleet_anomalies_open{kind}``, and the skew: ``corral_fleet_runners_behind``
  (runners on an older corral than the newest seen), ``corral_fleet_runners_stale_bundle``
  and ``corral_fleet_live_runs_stale_bundle`` (runners, and live runs, on another bundle
  than the current one) (docs/fleet.md). Completed runs per runner count in
  ``corral_runner_runs_total{runner,outcome}`` (``control-plane`` for the runs no runner
  ran), next to ``corral_runs_total{agent,outcome}``.
- **This process's own requests** (module-level counters, ``count_lock``,
  ``count_delivery``): ``corral_lock_operations_total`` and
  ``corral_webhook_deliveries_total``. Aggregate these with ``sum``.

Counting a lock request is one increment of a pre-bound counter, so the lock fast path
stays fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from corral import __version__
from corral.engine import fleet
from corral.engine.fleet import version_key
from corral.project import Project
from corral.store import (
    FLEET,
    AgentState,
    AnomalyKind,
    ItemState,
    PoolDecision,
    PoolState,
    Run,
    RunnerState,
    Store,
)
from corral.store._fleetscale import MEMBER_STATES

__all__ = [
    "LATENCY_BUCKETS",
    "LOCAL_REGISTRY",
    "FleetMetrics",
    "count_delivery",
    "count_lock",
    "metrics_router",
]

#: Seconds from enqueue to run start.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
#: How far back each scrape looks again, for events committed a little after their time.
OVERLAP_SECONDS = 60.0
#: Distinct webhook source labels kept; past that, deliveries count under "other" (the
#: source comes from the request path, and a label per probe would grow without bound).
MAX_SOURCES = 64
#: Decisions read at a time when counting those recorded since the previous scrape.
DECISION_PAGE = 1000

# -- this process's requests -------------------------------------------------------------

LOCAL_REGISTRY = CollectorRegistry(auto_describe=True)
_LOCK_OPERATIONS = Counter(
    "corral_lock_operations",
    "Lock requests answered by this gateway, by operation (acquire, release, heartbeat) and result",
    ["op", "result"],
    registry=LOCAL_REGISTRY,
)
_WEBHOOK_DELIVERIES = Counter(
    "corral_webhook_deliveries",
    "Webhook deliveries received by this gateway, by source and outcome",
    ["source", "outcome"],
    registry=LOCAL_REGISTRY,
)
_lock_children: dict[tuple[str, str], Any] = {}
_sources: set[str] = set()


def count_lock(op: str, result: str) -> None:
    """Count one lock request: ``op`` acquire, release or heartbeat; ``result`` granted,
    refreshed, held, deadlock, timed_out, released, extended, not_found, not_holder."""
    child = _lock_children.get((op, result))
    if child is None:
        child = _lock_children[(op, result)] = _LOCK_OPERATIONS.labels(op, result)
    child.inc()


def count_delivery(source: str, outcome: str) -> None:
    """Count one webhook delivery received by this gateway: ``source`` the configured
    source's name (the path's), ``outcome`` what became of it (accepted, duplicate,
    refused, invalid, ping, or an HTTP-level refusal such as unknown_source)."""
    if source not in _sources:
        if len(_sources) >= MAX_SOURCES:
            source = "other"
        else:
            _sources.add(source)
    _WEBHOOK_DELIVERIES.labels(source, outcome).inc()


class _Forward(Collector):
    """Yields another registry's metrics (this process's, into each app's registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()


# -- the fleet, from the store -------------------------------------------------------------


class _Gauges(Collector):
    def __init__(self, metrics: FleetMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "corral_queue_depth", "Items queued, waiting for a run, by agent", labels=["agent"]
        )
        running = GaugeMetricFamily(
            "corral_running", "Runs claimed and not yet ended, by agent", labels=["agent"]
        )
        scale = GaugeMetricFamily(
            "corral_agent_scale", "Runs of the agent allowed at once", labels=["agent"]
        )
        for agent in self.metrics.agents:
            depth.add_metric([agent.agent], agent.queued)
            running.add_metric([agent.agent], agent.active)
            scale.add_metric([agent.agent], agent.scale)
        desired = GaugeMetricFamily(
            "corral_pool_desired",
            "The pool size the autoscaler decided, by agent with a [scale] table: at most "
            "this many runs of it start at once",
            labels=["agent"],
        )
        size = GaugeMetricFamily(
            "corral_pool_size",
            "The pool's instances, by agent: the desired size, or more while runs that were "
            "busy when it shrank finish",
            labels=["agent"],
        )
        for pool in self.metrics.pools:
            desired.add_metric([pool.agent], pool.size)
            size.add_metric([pool.agent], max(pool.size, pool.running))
        warm = GaugeMetricFamily(
            "corral_warm_ready",
            "Prepared workspaces free for a run, by agent with [scale] warm: on this "
            "gateway's scheduler host, and on the runners that heartbeat to it (as they "
            "last reported)",
            labels=["agent"],
        )
        if self.metrics.warm is not None:
            for name, count in sorted(self.metrics.warm().items()):
                warm.add_metric([name], count)
        yield from (depth, running, scale, desired, size, warm)


class _FleetGauges(Collector):
    """The fleet's runners and anomalies, as read at the last scrape."""

    def __init__(self, metrics: FleetMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        runners = GaugeMetricFamily(
            "corral_fleet_runners",
            "Runners by state: online and offline (active ones), cordoned, draining, revoked",
            labels=["state"],
        )
        for state, count in self.metrics.runner_states.items():
            runners.add_metric([state], count)
        ratio = GaugeMetricFamily(
            "corral_fleet_online_ratio",
            "Runners heartbeating in the last 3 minutes over all registered (not revoked); "
            "1 with none registered",
        )
        ratio.add_metric([], self.metrics.online_ratio)
        anomalies = GaugeMetricFamily(
            "corral_fleet_anomalies_open", "Anomalies not yet resolved, by kind", labels=["kind"]
        )
        for kind, count in self.metrics.anomalies.items():
            anomalies.add_metric([kind], count)
        behind = GaugeMetricFamily(
            "corral_fleet_runners_behind",
            "Runners (not revoked) on an older corral version than the newest in the fleet",
            value=self.metrics.runners_behind,
        )
        stale = GaugeMetricFamily(
            "corral_fleet_runners_stale_bundle",
            "Runners with live runs of another bundle than the current one",
            value=self.metrics.bundle_skew[0],
        )
        stale_runs = GaugeMetricFamily(
            "corral_fleet_live_runs_stale_bundle",
            "Live runs of another bundle than the current one (runners and control plane)",
            value=self.metrics.bundle_skew[1],
        )
        yield from (runners, ratio, anomalies, behind, stale, stale_runs)
        scale = self.metrics.fleet_scale
        if scale is None:
            return  # no [fleet.autoscale], and nothing it started
        members = GaugeMetricFamily(
            "corral_fleet_scale_runners",
            "Runners the fleet autoscaler started, by state (starting, active, draining, "
            "stopped, failed; stopped and failed within the history kept)",
            labels=["state"],
        )
        for state, count in scale["members"].items():
            members.add_metric([state], count)
        yield members
        for key, help_text in (
            ("desired", "The runners the fleet autoscaler's last decision wanted"),
            ("busy_slots", "Busy slots of its runners at its last decision"),
            ("slots", "Slots of its runners (starting and active) at its last decision"),
            ("queued", "Runs waiting for a runner with its labels at its last decision"),
            (
                "budget_held",
                "Runs waiting for a runner with its labels that a daily cost cap held back "
                "(not counted as demand) at its last decision",
            ),
        ):
            yield GaugeMetricFamily(f"corral_fleet_scale_{key}", help_text, value=scale[key])


class FleetMetrics:
    """The numbers /metrics shows, for one gateway over ``store``; ``render()`` reads the
    store (a few queries) and answers the exposition text."""

    def __init__(
        self,
        store: Store,
        *,
        overlap_seconds: float = OVERLAP_SECONDS,
        project: Callable[[], Project] | None = None,
        warm: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.store = store
        self.project = project
        #: Ready warm workspaces by agent, on this host (scheduler/warm.py) and on the
        #: runners that heartbeat to it.
        self.warm = warm
        self.runner_states: dict[str, int] = {}
        #: The fleet autoscaler's members by state and its last decision's figures.
        self.fleet_scale: dict[str, Any] | None = None
        self.online_ratio = 1.0
        self.anomalies: dict[str, int] = {kind.value: 0 for kind in AnomalyKind}
        self.runners_behind = 0
        self.bundle_skew = (0, 0)
        self.overlap = timedelta(seconds=overlap_seconds)
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter(
            "corral_runs",
            "Runs ended, by agent and outcome (succeeded, failed, timed_out, killed, lost, "
            "over_budget)",
            ["agent", "outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "corral_tokens",
            "Model tokens used by ended runs, by agent and kind (input, output, cache_read, "
            "cache_write)",
            ["agent", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "corral_cost_usd",
            "Dollars spent by ended runs, by agent (from the model price table)",
            ["agent"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "corral_items_dropped",
            "Queued items dropped for a newer one (queue full), by agent",
            ["agent"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "corral_items_rejected",
            "Triggers refused (disabled agent, scale 0, cost cap, queue full for calls, ...), "
            "by agent",
            ["agent"],
            registry=self.registry,
        )
        self.runner_runs = Counter(
            "corral_runner_runs",
            "Runs ended, by runner (control-plane: no runner ran it) and outcome",
            ["runner", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "corral_dispatch_latency_seconds",
            "Seconds from a trigger's enqueue to its run's start, by agent",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pool_decisions = Counter(
            "corral_pool_decisions",
            "Autoscaler decisions recorded, by agent and direction (grow, shrink, hold)",
            ["agent", "direction"],
            registry=self.registry,
        )
        self.agents: list[AgentState] = []
        self.pools: list[PoolState] = []
        self._last_decision: int | None = None
        self.registry.register(_Gauges(self))
        self.registry.register(_FleetGauges(self))
        self.registry.register(_Forward(LOCAL_REGISTRY))
        self._start = store.now()
        self._since = self._start
        self._started: dict[str, datetime] = {}
        self._ended: dict[str, datetime] = {}
        self._set_aside: dict[int, datetime] = {}
        self._lock = asyncio.Lock()

    async def render(self) -> bytes:
        """Bring the numbers up to date from the store, then the exposition text."""
        await self.refresh()
        return generate_latest(self.registry)

    async def refresh(self) -> None:
        async with self._lock:  # one scrape at a time: each event is counted once
            now = self.store.now()
            since = self._since
            for run, enqueued_at in await self.store.runs_moved_since(since):
                started, ended = run.started_at, run.ended_at
                if started is not None and started >= since and run.id not in self._started:
                    self._started[run.id] = started
                    if enqueued_at is not None:
                        waited = (started - enqueued_at).total_seconds()
                        self.latency.labels(run.agent).observe(max(0.0, waited))
                if ended is not None and ended >= since and run.id not in self._ended:
                    self._ended[run.id] = ended
                    self._count_ended(run.agent, run)
            for item in await self.store.items_set_aside_since(since):
                if item.id in self._set_aside or item.finished_at is None:
                    continue
                self._set_aside[item.id] = item.finished_at
                counter = self.dropped if item.state is ItemState.DROPPED else self.rejected
                counter.labels(item.agent).inc()
            self.agents = [a for a in await self.store.agent_states() if a.present]
            await self._refresh_pools()
            await self._refresh_fleet()
            self._since = max(self._start, now - self.overlap)
            for seen in (self._started, self._ended):
                for key in [k for k, at in seen.items() if at < self._since]:
                    del seen[key]
            for number in [k for k, at in self._set_aside.items() if at < self._since]:
                del self._set_aside[number]

    async def _refresh_pools(self) -> None:
        """The pools now, and the decisions recorded since the previous scrape (counted
        once each, by id; those before this gateway started are not counted)."""
        self.pools = await self.store.pool_states()
        last = self._last_decision
        recent: list[PoolDecision] = []
        before: int | None = None
        while True:  # newest first, a page at a time, back to the last one counted
            page = await self.store.pool_decisions(limit=DECISION_PAGE, before=before)
            recent += page
            if len(page) < DECISION_PAGE:
                break
            oldest = page[-1]
            if oldest.id <= last if last is not None else oldest.decided_at < self._start:
                break
            before = oldest.id
        for decision in recent:
            if decision.id > last if last is not None else decision.decided_at >= self._start:
                self.pool_decisions.labels(decision.agent, decision.direction).inc()
        self._last_decision = max([last or 0, *(d.id for d in recent)])

    async def _refresh_fleet_scale(self) -> None:
        members = await self.store.fleet_members()
        configured = self.project is not None and self.project().config.fleet.autoscale
        if not members and not configured:
            self.fleet_scale = None
            return
        counts = dict.fromkeys(MEMBER_STATES, 0)
        for member in members:
            counts[member.state] = counts.get(member.state, 0) + 1
        last = await self.store.pool_decisions(FLEET, limit=1)
        inputs = last[0].inputs if last else {}
        self.fleet_scale = {
            "members": counts,
            "desired": float(last[0].desired) if last else 0.0,
            "busy_slots": float(inputs.get("busy_slots") or 0),
            "slots": float(inputs.get("slots") or 0),
            "queued": float(inputs.get("queued") or 0),
            "budget_held": float(inputs.get("budget_held") or 0),
        }

    async def _refresh_fleet(self) -> None:
        await self._refresh_fleet_scale()
        settings = fleet.fleet_settings(self.project()) if self.project else fleet.FleetSettings()
        await fleet.check_offline(self.store, settings)
        now = self.store.now()
        states = {"online": 0, "offline": 0, **{s.value: 0 for s in RunnerState}}
        del states[RunnerState.ACTIVE.value]
        live = recent = 0
        runners = await self.store.list_runners()
        for runner in runners:
            if runner.state is RunnerState.ACTIVE:
                online = runner.online(now, settings.offline_after_seconds)
                states["online" if online else "offline"] += 1
            else:
                states[runner.state.value] += 1
            if runner.state is not RunnerState.REVOKED:
                live += 1
                recent += now - runner.last_heartbeat_at <= fleet.ONLINE_RATIO_WINDOW
        self.runner_states = states
        self.online_ratio = recent / live if live else 1.0
        current = [r for r in runners if r.state is not RunnerState.REVOKED]
        newest = max({r.version for r in current if r.version} | {__version__}, key=version_key)
        self.runners_behind = sum(
            1 for r in current if version_key(r.version) < version_key(newest)
        )
        bundles = await fleet.bundles_running(self.store)
        self.bundle_skew = (bundles["runnersBehind"], bundles["liveRunsBehind"])
        self.anomalies = {kind.value: 0 for kind in AnomalyKind}
        self.anomalies.update(await self.store.count_open_anomalies())

    def _count_ended(self, agent: str, run: Run) -> None:
        self.runs.labels(agent, run.outcome).inc()
        self.runner_runs.labels(run.runner_id or fleet.CONTROL_PLANE, run.outcome).inc()
        for kind, used in (
            ("input", run.input_tokens),
            ("output", run.output_tokens),
            ("cache_read", run.cache_read_tokens),
            ("cache_write", run.cache_write_tokens),
        ):
            if used:
                self.tokens.labels(agent, kind).inc(used)
        if run.cost_usd:
            self.cost.labels(agent).inc(run.cost_usd)


def metrics_router(metrics: FleetMetrics) -> APIRouter:
    """``GET /metrics`` over ``metrics`` (the app decides whether it needs a token)."""
    router = APIRouter()

    @router.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        tags=["metrics"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def scrape() -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
