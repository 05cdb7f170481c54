"""The OpenTelemetry exporter: traces and metrics of runs, sent over OTLP/HTTP.

Each run is one trace: a ``corral.run`` span from its claim to its recorded end, with two
children, ``corral.queue_wait`` (from the trigger's arrival to the claim) and
``corral.claim`` (the claim statement that handed it to this scheduler). Metrics:
``corral.runs.started`` and ``corral.runs.finished`` (counters), ``corral.run.duration``
(a histogram, seconds) and ``corral.queue.depth`` (a gauge per agent, sampled).
Attribute names follow Action Llama's where it has one (``agent.name``,
``agent.run_id``, ``agent.trigger_type``) so that queries written for it keep working.

OTLP/HTTP (protobuf) rather than gRPC: no grpcio wheel to build or ship, it passes
through ordinary HTTP proxies, and a collector listens for it on 4318 by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from corral._version import __version__
from corral.credentials import CredentialStore, implied_credentials
from corral.credentials.redact import Redactor
from corral.errors import CorralError
from corral.project import Project, TelemetryConfig
from corral.project.presets import key_providers
from corral.store import Claim, Run, RunState, Store, StoreError
from corral.telemetry import RunObserver

__all__ = ["DEFAULT_ENDPOINT", "OtelObserver", "run_attributes", "shown_endpoint"]

log = logging.getLogger("corral.telemetry")

#: Where a collector listens for OTLP/HTTP when neither the config nor the environment says.
DEFAULT_ENDPOINT = "http://localhost:4318"
#: How often the queue depth is read from the store, in seconds.
QUEUE_SAMPLE_EVERY = 5.0
#: Run durations span seconds to hours (the default agent timeout is 15 minutes).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)
#: How long one export may take before it is given up (seconds).
EXPORT_TIMEOUT = 5.0


def _endpoint(config: TelemetryConfig) -> str:
    """The collector's base URL: ``endpoint``, else the standard OTLP environment variable."""
    chosen = config.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
    return chosen.rstrip("/")


def shown_endpoint(url: str) -> str:
    """``url`` as it may be logged: without the user and password a collector's URL may
    carry (``http://user:pass@host:4318``)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _ns(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1_000_000_000)


def run_attributes(run: Run) -> dict[str, Any]:
    """The attributes of a finished run's span (those with no value are left out)."""
    values: dict[str, Any] = {
        "agent.name": run.agent,
        "agent.run_id": run.id,
        "agent.trigger_type": run.trigger.value,
        "corral.run.outcome": run.state.value,
        "corral.run.exit_code": run.exit_code,
        "corral.run.error": run.error,
        "corral.run.attempt": run.attempt,
        "corral.run.parent_id": run.parent_run_id,
        "corral.run.host": run.host,
        "corral.run.duration_s": _duration(run),
        "gen_ai.usage.input_tokens": run.input_tokens,
        "gen_ai.usage.output_tokens": run.output_tokens,
        "corral.run.cache_read_tokens": run.cache_read_tokens,
        "corral.run.cache_write_tokens": run.cache_write_tokens,
        "corral.run.cost_usd": run.cost_usd,
        "corral.run.budget": run.budget,
    }
    return {key: value for key, value in values.items() if value is not None}


def _redactor(project: Project, agent_name: str) -> Callable[[str], str]:
    """What replaces the values of ``agent_name``'s credentials (those it names and the
    model keys its models imply) with [REDACTED] in text bound for the collector. A
    credential that cannot be read is left out: the executor redacted the run's error
    with the run's own values before storing it."""
    agent = project.agents.get(agent_name)
    if agent is None:
        return lambda text: text
    pairs = key_providers(project.config.models, agent.config)
    implied = [str(ref) for ref in implied_credentials(pairs, agent.config.credentials)]
    store = CredentialStore()
    values: list[str] = []
    for names in (list(agent.config.credentials), implied):
        try:
            loaded = store.resolve(names, missing_ok=True)
        except (CorralError, OSError):
            continue
        values += [value for credential in loaded for value in credential.secrets()]
    return Redactor(values).redact


def _duration(run: Run) -> float | None:
    start = run.started_at or run.created_at
    if run.ended_at is None:
        return None
    return max(0.0, (run.ended_at - start).total_seconds())


class OtelObserver(RunObserver):
    """Exports what the scheduler reports to the OTLP/HTTP collector of ``config``."""

    def __init__(self, config: TelemetryConfig, project: Project) -> None:
        self.config = config
        self.project = project
        self.endpoint = _endpoint(config)
        self._spans: dict[str, Span] = {}
        self._tracers: TracerProvider | None = None
        self._meters: MeterProvider | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._store: Store | None = None

    async def open(self, store: Store, scheduler_id: str) -> None:
        self._store = store
        resource = Resource.create(
            {
                "service.name": self.config.service_name or "corral",
                "service.version": __version__,
                "service.instance.id": scheduler_id,
                "host.name": socket.gethostname(),
                "corral.project": self.project.config.project_name or self.project.root.name,
            }
        )
        headers = dict(self.config.headers)
        rate = self.config.sampling_rate
        self._tracers = TracerProvider(
            resource=resource,
            sampler=None if rate is None else ParentBased(TraceIdRatioBased(rate)),
        )
        spans = OTLPSpanExporter(
            endpoint=f"{self.endpoint}/v1/traces", headers=headers, timeout=EXPORT_TIMEOUT
        )
        self._tracers.add_span_processor(BatchSpanProcessor(spans))
        metrics = OTLPMetricExporter(
            endpoint=f"{self.endpoint}/v1/metrics", headers=headers, timeout=EXPORT_TIMEOUT
        )
        # The interval is OTEL_METRIC_EXPORT_INTERVAL (milliseconds; 60 s by default).
        reader = PeriodicExportingMetricReader(metrics)
        self._meters = MeterProvider(resource=resource, metric_readers=[reader])
        self._instruments()
        await self._sample_queue()
        self._sampler = asyncio.create_task(self._sample_forever(), name="telemetry queue depth")
        log.info(
            "telemetry: exporting traces and metrics to %s over OTLP/HTTP",
            shown_endpoint(self.endpoint),
            extra={"action": "telemetry_started"},
        )

    def _instruments(self) -> None:
        assert self._tracers is not None and self._meters is not None
        self._tracer = self._tracers.get_tracer("corral", __version__)
        meter = self._meters.get_meter("corral", __version__)
        self._started = meter.create_counter(
            "corral.runs.started", unit="{run}", description="Runs claimed and started"
        )
        self._finished = meter.create_counter(
            "corral.runs.finished", unit="{run}", description="Runs ended, by outcome"
        )
        self._duration = meter.create_histogram(
            "corral.run.duration",
            unit="s",
            description="How long runs took, start to end",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._depth = meter.create_gauge(
            "corral.queue.depth", unit="{item}", description="Queued items per agent"
        )

    def claimed(self, claims: Sequence[Claim], started_ns: int, ended_ns: int) -> None:
        if self._tracers is None:
            return
        for claim in claims:
            run = claim.run
            span = self._tracer.start_span(
                "corral.run",
                kind=SpanKind.INTERNAL,
                start_time=ended_ns,
                attributes={
                    "agent.name": run.agent,
                    "agent.run_id": run.id,
                    "agent.trigger_type": run.trigger.value,
                },
            )
            self._spans[run.id] = span
            inside = trace.set_span_in_context(span)
            waited = self._tracer.start_span(
                "corral.queue_wait",
                context=inside,
                start_time=min(_ns(claim.item.enqueued_at) or ended_ns, ended_ns),
                attributes={"corral.item.id": claim.item.id, "agent.name": run.agent},
            )
            waited.end(end_time=ended_ns)
            took = self._tracer.start_span(
                "corral.claim",
                context=inside,
                start_time=started_ns,
                attributes={"corral.claim.batch": len(claims), "agent.name": run.agent},
            )
            took.end(end_time=ended_ns)
            self._started.add(1, {"agent.name": run.agent, "agent.trigger_type": run.trigger.value})

    def finished(self, run: Run) -> None:
        if self._tracers is None:
            return
        outcome = run.state.value
        labels = {"agent.name": run.agent, "corral.run.outcome": outcome}
        self._finished.add(1, labels)
        took = _duration(run)
        if took is not None:
            self._duration.record(took, labels)
        span = self._spans.pop(run.id, None)
        if span is None:  # claimed before telemetry started (cannot happen today)
            return
        if run.error is not None:  # redacted before it was stored; once more, to be sure
            run = dataclasses.replace(run, error=_redactor(self.project, run.agent)(run.error))
        span.set_attributes(run_attributes(run))
        if run.state is RunState.SUCCEEDED:
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_status(Status(StatusCode.ERROR, run.error or outcome))
        span.end(end_time=_ns(run.ended_at))

    def unrecorded(self, run: Run, reason: str) -> None:
        span = self._spans.pop(run.id, None)
        if span is None:
            return
        span.set_attribute("corral.run.outcome", "unrecorded")
        span.set_status(Status(StatusCode.ERROR, reason))
        span.end()

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(QUEUE_SAMPLE_EVERY)
            await self._sample_queue()

    async def _sample_queue(self) -> None:
        if self._store is None:
            return
        try:
            states = await self._store.agent_states()
        except StoreError as exc:  # the scheduler reports the store's failures itself
            log.debug("telemetry: could not read the queue depth: %s", exc)
            return
        for state in states:
            if state.present:
                self._depth.set(state.queued, {"agent.name": state.agent})

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._tracers is None or self._meters is None:
            return
        await self._sample_queue()
        for run_id, span in list(self._spans.items()):
            span.set_attribute("corral.run.outcome", "unknown")
            span.end()
            del self._spans[run_id]
        tracers, meters = self._tracers, self._meters
        self._tracers = self._meters = None
        # Shutting down flushes: the last spans and one last collection of the metrics.
        # It blocks on HTTP, so both run beside the loop, side by side: a collector that
        # does not answer costs the export timeout once.
        started = time.monotonic()
        await asyncio.gather(
            asyncio.to_thread(tracers.shutdown),
            asyncio.to_thread(meters.shutdown, EXPORT_TIMEOUT * 1000),
        )
        log.debug("telemetry: flushed in %.2f s", time.monotonic() - started)
