"""/metrics over real HTTP after real runs, parsed with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.gateway.app import create_app
from corral.gateway.metrics import DECISION_PAGE, MAX_SOURCES, FleetMetrics, count_delivery
from corral.scheduler.service import Scheduler
from corral.store import FLEET, NewRun, RunState, Store, TriggerKind
from tests.gateway.fleet import TOKEN, Fleet, running_fleet
from tests.scheduler.helpers import wait_for, write_project

AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = "deploy://metrics"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


@pytest.fixture
async def fleet(tmp_path: Path, store: Store) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    agents: dict[str, dict[str, object]] = {
        "ok": {"scale": 2, "command": "true"},
        "bad": {"command": "exit 3"},
        "locker": {"command": f'rlock "{KEY}" && rlock-heartbeat "{KEY}" && runlock "{KEY}"'},
        "off": {"scale": 0, "command": "true"},
        "tiny": {"maxWorkQueueSize": 1, "command": "true"},
        "sleeper": {"command": "sleep 30"},
    }
    async with running_fleet(tmp_path / "p", store, agents) as f:
        async with httpx.AsyncClient(base_url=f.url, timeout=30) as http:
            yield f, http


async def test_counts_after_real_runs(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    other_gateway = FleetMetrics(f.store)  # another gateway on the same store
    before = await scrape(http)
    locks_before = {
        (op, result): value(before, "corral_lock_operations_total", op=op, result=result) or 0.0
        for op, result in [
            ("acquire", "granted"),
            ("heartbeat", "extended"),
            ("release", "released"),
        ]
    }

    await f.store.set_paused("tiny", True)
    for agent in ("ok", "ok", "bad", "locker", "off", "tiny", "tiny", "tiny"):
        await f.trigger(agent)
    # A run with tokens and a cost, as the built-in harness records them.
    costly = await f.store.create_run(NewRun(agent="ok", trigger=TriggerKind.MANUAL))
    await f.store.mark_run_running(costly.id, pid=None, host=None)
    await f.store.record_usage(
        costly.id,
        input_tokens=1000,
        output_tokens=200,
        cache_read_tokens=50,
        cache_write_tokens=0,
        cost_usd=0.25,
    )
    await f.store.finish_run(costly.id, state=RunState.SUCCEEDED, exit_code=0)
    await f.finished("ok", 3)
    await f.finished("bad", 1)
    [locked] = await f.finished("locker", 1)
    assert locked.state is RunState.SUCCEEDED

    samples = await scrape(http)
    assert value(samples, "corral_runs_total", agent="ok", outcome="succeeded") == 3
    assert value(samples, "corral_runs_total", agent="bad", outcome="failed") == 1
    assert value(samples, "corral_runs_total", agent="locker", outcome="succeeded") == 1
    assert value(samples, "corral_cost_usd_total", agent="ok") == 0.25
    assert value(samples, "corral_tokens_total", agent="ok", kind="input") == 1000
    assert value(samples, "corral_tokens_total", agent="ok", kind="output") == 200
    assert value(samples, "corral_tokens_total", agent="ok", kind="cache_read") == 50
    assert value(samples, "corral_tokens_total", agent="ok", kind="cache_write") is None
    assert value(samples, "corral_items_dropped_total", agent="tiny") == 2
    assert value(samples, "corral_items_rejected_total", agent="off") == 1
    assert value(samples, "corral_queue_depth", agent="tiny") == 1
    assert value(samples, "corral_queue_depth", agent="ok") == 0
    assert value(samples, "corral_running", agent="ok") == 0
    assert value(samples, "corral_agent_scale", agent="ok") == 2
    # Queued runs' wait from enqueue to start (the costly run was never queued).
    assert value(samples, "corral_dispatch_latency_seconds_count", agent="ok") == 2
    assert value(samples, "corral_dispatch_latency_seconds_count", agent="bad") == 1
    waited = value(samples, "corral_dispatch_latency_seconds_sum", agent="ok")
    assert waited is not None and 0 <= waited < 20
    infinite = value(samples, "corral_dispatch_latency_seconds_bucket", agent="ok", le="+Inf")
    assert infinite == 2
    for (op, result), was in locks_before.items():
        now = value(samples, "corral_lock_operations_total", op=op, result=result)
        assert now == was + 1, (op, result)

    # Scraping again counts nothing twice; another gateway on the store reports the same.
    again = await scrape(http)
    assert value(again, "corral_runs_total", agent="ok", outcome="succeeded") == 3
    assert value(again, "corral_items_dropped_total", agent="tiny") == 2
    elsewhere = parse((await other_gateway.render()).decode())
    for name, labels in [
        ("corral_runs_total", {"agent": "ok", "outcome": "succeeded"}),
        ("corral_runs_total", {"agent": "bad", "outcome": "failed"}),
        ("corral_cost_usd_total", {"agent": "ok"}),
        ("corral_items_rejected_total", {"agent": "off"}),
        ("corral_dispatch_latency_seconds_count", {"agent": "ok"}),
    ]:
        assert value(elsewhere, name, **labels) == value(again, name, **labels), name


async def test_running_runs_and_a_kill(fleet: tuple[Fleet, httpx.AsyncClient]) -> None:
    f, http = fleet
    await f.trigger("sleeper")

    async def running() -> bool:
        return bool(await f.store.list_runs(agent="sleeper", states=[RunState.RUNNING]))

    await wait_for(running)
    samples = await scrape(http)
    assert value(samples, "corral_running", agent="sleeper") == 1
    [run] = await f.store.list_runs(agent="sleeper")
    await http.post(f"/control/runs/{run.id}/kill", headers=AUTH)
    await f.finished("sleeper", 1)
    samples = await scrape(http)
    assert value(samples, "corral_running", agent="sleeper") == 0
    assert value(samples, "corral_runs_total", agent="sleeper", outcome="killed") == 1


async def test_metrics_need_the_token_unless_public(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"dev": {"command": "true"}})
    scheduler = Scheduler(project, store)
    await scheduler.start()
    for public, expected in ((False, 401), (True, 200)):
        app = create_app(scheduler, TOKEN, public_metrics=public)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            assert (await http.get("/metrics")).status_code == expected
            assert (await http.get("/metrics", headers=AUTH)).status_code == 200
            assert (await http.get("/control/status")).status_code == 401  # still guarded


async def test_webhook_deliveries_are_counted_with_bounded_sources(
    fleet: tuple[Fleet, httpx.AsyncClient],
) -> None:
    _, http = fleet
    before = value(await scrape(http), "corral_webhook_deliveries_total", source="gh", outcome="ok")
    count_delivery("gh", "ok")
    count_delivery("gh", "ok")
    for n in range(MAX_SOURCES + 5):
        count_delivery(f"probe-{n}", "unknown_source")
    samples = await scrape(http)
    after = value(samples, "corral_webhook_deliveries_total", source="gh", outcome="ok")
    assert after == (before or 0) + 2
    sources = {
        dict(labels)["source"]
        for name, labels in samples
        if name == "corral_webhook_deliveries_total"
    }
    assert len(sources) <= MAX_SOURCES + 1 and "other" in sources


async def test_every_decision_between_two_scrapes_is_counted(store: Store) -> None:
    """More decisions than one read takes between two scrapes: each is counted once."""
    metrics = FleetMetrics(store)
    await store.record_fleet_decision("s", size=1, desired=1, policy="p", reason="r", inputs={})
    await metrics.refresh()
    first = parse((await metrics.render()).decode())
    assert value(first, "corral_pool_decisions_total", agent=FLEET, direction="hold") == 1
    for n in range(DECISION_PAGE + 5):
        grow = n % 2 == 0
        await store.record_fleet_decision(
            "s", size=1, desired=2 if grow else 0, policy="p", reason="r", inputs={}
        )
    after = parse((await metrics.render()).decode())
    grows = value(after, "corral_pool_decisions_total", agent=FLEET, direction="grow")
    shrinks = value(after, "corral_pool_decisions_total", agent=FLEET, direction="shrink")
    assert (grows, shrinks) == (503, 502)
    assert value(after, "corral_pool_decisions_total", agent=FLEET, direction="hold") == 1
    again = parse((await metrics.render()).decode())
    assert value(again, "corral_pool_decisions_total", agent=FLEET, direction="grow") == 503
