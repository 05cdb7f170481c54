"""Conformance suite for accounting: run usage, daily totals and the daily cost caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from corral.store import (
    AgentSpec,
    CallRefusal,
    ItemState,
    NewItem,
    NewRun,
    Run,
    Store,
    TriggerKind,
    UsageTotal,
)
from tests.store.conftest import Clock

NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def noon(store: Store) -> Clock:
    ticking = Clock(NOON)
    store.clock = ticking
    return ticking


async def setup(
    store: Store, *, agent_caps: dict[str, float | None], project_cap: float | None = None
) -> None:
    await store.sync_project(
        [AgentSpec(name, 2, 10, daily_cost_cap=cap) for name, cap in agent_caps.items()],
        scale_cap=None,
        max_attempts=3,
        max_reruns=2,
        daily_cost_cap=project_cap,
    )


async def spend(store: Store, agent: str, dollars: float, tokens: int = 100) -> Run:
    run = await store.create_run(NewRun(agent=agent, trigger=TriggerKind.MANUAL))
    recorded = await store.record_usage(
        run.id,
        input_tokens=tokens,
        output_tokens=tokens // 2,
        cache_read_tokens=tokens // 4,
        cache_write_tokens=0,
        cost_usd=dollars,
    )
    assert recorded is not None
    return recorded


async def queue(store: Store, agent: str) -> tuple[ItemState, str | None]:
    result = await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))
    return result.item.state, result.item.reason


async def test_record_usage_sets_totals_and_keeps_the_budget(store: Store, noon: Clock) -> None:
    await setup(store, agent_caps={"a": None})
    run = await spend(store, "a", 0.25, tokens=400)
    assert (run.input_tokens, run.output_tokens, run.cache_read_tokens) == (400, 200, 100)
    assert (run.cost_usd, run.tokens, run.budget, run.outcome) == (0.25, 700, None, "starting")
    stopped = await store.record_usage(
        run.id,
        input_tokens=500,
        output_tokens=200,
        cache_read_tokens=100,
        cache_write_tokens=10,
        cost_usd=0.5,
        budget="cost",
    )
    assert stopped is not None and stopped.budget == "cost"
    # A later write without a budget (the loop's final totals) keeps the one recorded.
    again = await store.record_usage(
        run.id,
        input_tokens=500,
        output_tokens=200,
        cache_read_tokens=100,
        cache_write_tokens=10,
        cost_usd=0.5,
    )
    assert again is not None and (again.budget, again.cost_usd, again.tokens) == ("cost", 0.5, 810)
    assert await store.record_usage("nope", **_zero()) is None


def _zero() -> dict[str, int | float | None]:
    return {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": None,
    }


async def test_a_run_without_usage_has_no_tokens_or_cost(store: Store, noon: Clock) -> None:
    run = await store.create_run(NewRun(agent="a", trigger=TriggerKind.MANUAL))
    assert (run.tokens, run.cost_usd, run.outcome) == (None, None, "starting")


async def test_spend_and_totals_per_agent_and_utc_day(store: Store, noon: Clock) -> None:
    await setup(store, agent_caps={"a": None, "b": None})
    noon.now = NOON - timedelta(days=1)
    await spend(store, "a", 1.0)
    noon.now = NOON - timedelta(hours=12, seconds=1)  # 23:59:59 the day before
    await spend(store, "a", 0.5)
    noon.now = NOON - timedelta(hours=12)  # midnight: the new day
    await spend(store, "a", 0.25)
    noon.now = NOON
    await spend(store, "b", 2.0, tokens=8)
    unpriced = await store.create_run(NewRun(agent="b", trigger=TriggerKind.MANUAL))
    assert unpriced.cost_usd is None

    assert await store.spent_today("a") == pytest.approx(0.25)
    assert await store.spent_today("b") == pytest.approx(2.0)
    assert await store.spent_today() == pytest.approx(2.25)
    totals = await store.usage_by_day(days=2)
    assert totals == [
        UsageTotal("2026-03-10", "a", 1, 1, 100, 50, 25, 0, pytest.approx(0.25)),  # type: ignore[arg-type]
        UsageTotal("2026-03-10", "b", 2, 1, 8, 4, 2, 0, pytest.approx(2.0)),  # type: ignore[arg-type]
        UsageTotal("2026-03-09", "a", 2, 2, 200, 100, 50, 0, pytest.approx(1.5)),  # type: ignore[arg-type]
    ]
    assert [t.day for t in await store.usage_by_day(days=1)] == ["2026-03-10", "2026-03-10"]
    assert [t.agent for t in await store.usage_by_day(days=5, agent="b")] == ["b"]
    with pytest.raises(ValueError, match="days must be >= 1"):
        await store.usage_by_day(days=0)


async def test_an_agent_cap_refuses_new_runs_until_the_day_turns(store: Store, noon: Clock) -> None:
    await setup(store, agent_caps={"a": 1.0, "b": None})
    assert await queue(store, "a") == (ItemState.QUEUED, None)
    await spend(store, "a", 0.6)
    assert (await queue(store, "a"))[0] is ItemState.QUEUED  # under the cap
    await spend(store, "a", 0.4)  # exactly at the cap: reached
    state, reason = await queue(store, "a")
    assert state is ItemState.REJECTED
    assert reason == (
        "daily cost cap reached: agent 'a' has spent $1.00 today (UTC) of its $1.00 a day "
        "([budget] dailyCost in agents/a/config.toml); new runs are refused until 00:00 UTC "
        "(in 12h 00m)"
    )
    # Another agent is not affected by a's cap.
    assert (await queue(store, "b"))[0] is ItemState.QUEUED
    noon.now = NOON + timedelta(hours=12)  # midnight UTC
    assert (await queue(store, "a"))[0] is ItemState.QUEUED


async def test_the_project_cap_refuses_every_agent(store: Store, noon: Clock) -> None:
    await setup(store, agent_caps={"a": 10.0, "b": None}, project_cap=3.0)
    await spend(store, "a", 2.0)
    assert (await queue(store, "b"))[0] is ItemState.QUEUED
    await spend(store, "b", 1.5)
    for agent in ("a", "b"):
        state, reason = await queue(store, agent)
        assert state is ItemState.REJECTED
        assert reason is not None and reason.startswith(
            "daily cost cap reached: the project has spent $3.50 today (UTC) of its $3.00 a day"
        )


async def test_a_duplicate_is_not_refused_by_a_cap(store: Store, noon: Clock) -> None:
    await setup(store, agent_caps={"a": 1.0})
    first = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK, dedupe_key="d1"))
    await spend(store, "a", 5.0)
    again = await store.enqueue(NewItem("a", TriggerKind.WEBHOOK, dedupe_key="d1"))
    assert again.duplicate and again.item.id == first.item.id


async def test_a_call_into_a_capped_agent_is_refused_with_the_reason(
    store: Store, noon: Clock
) -> None:
    await setup(store, agent_caps={"caller": None, "callee": 0.5})
    caller = await store.create_run(NewRun(agent="caller", trigger=TriggerKind.MANUAL))
    await spend(store, "callee", 0.5)
    refusal = await store.create_call(caller.id, "callee", "ctx", max_depth=3)
    assert isinstance(refusal, CallRefusal)
    assert "daily cost cap reached: agent 'callee'" in refusal.reason


async def test_a_zero_cap_refuses_everything_and_negative_caps_are_errors(
    store: Store, noon: Clock
) -> None:
    await setup(store, agent_caps={"a": 0.0})
    assert (await queue(store, "a"))[0] is ItemState.REJECTED
    with pytest.raises(ValueError, match="daily_cost_cap must be >= 0"):
        AgentSpec("a", 1, 1, daily_cost_cap=-1.0)
    with pytest.raises(ValueError, match="daily_cost_cap must be None or >= 0"):
        await store.sync_project(
            [], scale_cap=None, max_attempts=1, max_reruns=0, daily_cost_cap=-2
        )
