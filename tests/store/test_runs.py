"""Conformance suite for run operations: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest

from corral.errors import StoreError
from corral.store import NewRun, Run, RunState, Store, TriggerKind

TERMINAL = [s for s in RunState if s.is_terminal]


async def new_run(store: Store, agent: str = "triage", **fields: object) -> Run:
    return await store.create_run(NewRun(agent=agent, trigger=TriggerKind.MANUAL, **fields))


async def started(store: Store, agent: str = "triage") -> Run:
    run = await new_run(store, agent)
    return await store.mark_run_running(run.id, pid=4242, host="worker-1")


async def test_create_run_records_a_starting_run(store: Store) -> None:
    before = datetime.now(UTC)
    run = await store.create_run(
        NewRun(agent="triage", trigger=TriggerKind.WEBHOOK, prompt="fix #12")
    )
    assert re.fullmatch(r"triage-[0-9a-f]{12}", run.id)
    assert run.state is RunState.STARTING
    assert run.trigger is TriggerKind.WEBHOOK
    assert run.prompt == "fix #12"
    assert before <= run.created_at <= datetime.now(UTC)
    assert run.created_at.tzinfo == UTC
    assert (run.started_at, run.ended_at, run.exit_code, run.pid, run.host) == (None,) * 5
    assert await store.get_run(run.id) == run


async def test_create_run_links_a_parent(store: Store) -> None:
    parent = await new_run(store)
    child = await store.create_run(
        NewRun(agent="fixer", trigger=TriggerKind.CALL, parent_run_id=parent.id)
    )
    assert child.parent_run_id == parent.id
    assert (await store.get_run(child.id)) == child


async def test_get_run_of_unknown_id_is_none(store: Store) -> None:
    assert await store.get_run("nobody-000000000000") is None


@pytest.mark.parametrize(
    "detail",
    [
        None,
        {},
        {"issue": 12, "labels": ["bug", "p1"], "repo": {"owner": "acme", "name": "web"}},
        {"title": "Ünïcödé ✓ 修复 🚀", "body": 'line1\nline2\t"quoted" \\ back'},
        {"deep": [[{"a": [1, 2.5, True, False, None]}], {"b": {"c": {"d": "é"}}}]},
    ],
)
async def test_trigger_detail_round_trips(store: Store, detail: dict[str, object] | None) -> None:
    run = await store.create_run(
        NewRun(agent="triage", trigger=TriggerKind.WEBHOOK, trigger_detail=detail)
    )
    assert run.trigger_detail == detail
    fetched = await store.get_run(run.id)
    assert fetched is not None and fetched.trigger_detail == detail


async def test_mark_run_running_sets_start(store: Store) -> None:
    run = await new_run(store)
    running = await store.mark_run_running(run.id, pid=4242, host="worker-1")
    assert running.state is RunState.RUNNING
    assert (running.pid, running.host) == (4242, "worker-1")
    assert running.started_at is not None and running.started_at >= run.created_at
    assert await store.get_run(run.id) == running


async def test_mark_run_running_refused_unless_starting(store: Store) -> None:
    run = await started(store)
    with pytest.raises(StoreError, match=r"it is running, not starting"):
        await store.mark_run_running(run.id, pid=1, host=None)
    await store.finish_run(run.id, state=RunState.KILLED, exit_code=None)
    with pytest.raises(StoreError, match=r"it is killed, not starting"):
        await store.mark_run_running(run.id, pid=1, host=None)


async def test_mark_run_running_of_unknown_run(store: Store) -> None:
    with pytest.raises(StoreError, match=r"no run 'ghost-1'"):
        await store.mark_run_running("ghost-1", pid=None, host=None)


@pytest.mark.parametrize("final", TERMINAL)
async def test_finish_run_from_running(store: Store, final: RunState) -> None:
    run = await started(store)
    ended = await store.finish_run(run.id, state=final, exit_code=3, error="boom")
    assert (ended.state, ended.exit_code, ended.error) == (final, 3, "boom")
    assert ended.ended_at is not None and run.started_at is not None
    assert ended.duration == ended.ended_at - run.started_at
    assert await store.get_run(run.id) == ended


async def test_finish_run_from_starting(store: Store) -> None:
    run = await new_run(store)
    ended = await store.finish_run(run.id, state=RunState.FAILED, exit_code=None, error="no slot")
    assert ended.state is RunState.FAILED
    assert ended.started_at is None and ended.duration is None


async def test_double_finish_is_refused(store: Store) -> None:
    run = await started(store)
    first = await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=0)
    with pytest.raises(StoreError, match=r"already ended as succeeded"):
        await store.finish_run(run.id, state=RunState.FAILED, exit_code=1)
    assert await store.get_run(run.id) == first


async def test_finish_run_needs_a_terminal_state(store: Store) -> None:
    run = await started(store)
    with pytest.raises(ValueError, match="terminal state"):
        await store.finish_run(run.id, state=RunState.RUNNING, exit_code=None)


async def test_finish_run_of_unknown_run(store: Store) -> None:
    with pytest.raises(StoreError, match=r"no run 'ghost-2'"):
        await store.finish_run("ghost-2", state=RunState.LOST, exit_code=None)


async def test_list_runs_newest_first_with_filters_and_limit(store: Store) -> None:
    made = [await new_run(store, agent) for agent in ["a", "b", "a", "b", "a"]]
    await store.mark_run_running(made[0].id, pid=None, host=None)
    await store.finish_run(made[2].id, state=RunState.FAILED, exit_code=1)

    newest_first = sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)
    assert [r.id for r in await store.list_runs()] == [r.id for r in newest_first]
    assert [r.id for r in await store.list_runs(limit=2)] == [r.id for r in newest_first[:2]]
    assert await store.list_runs(limit=0) == []
    assert [r.id for r in await store.list_runs(agent="a")] == [
        r.id for r in newest_first if r.agent == "a"
    ]
    assert [r.id for r in await store.list_runs(agent="a", limit=1)] == [made[4].id]
    assert [r.id for r in await store.list_runs(states=[RunState.RUNNING])] == [made[0].id]
    live = await store.list_runs(agent="a", states={RunState.STARTING, RunState.RUNNING})
    assert [r.id for r in live] == [made[4].id, made[0].id]
    assert await store.list_runs(states=[]) == []
    assert await store.list_runs(agent="nobody") == []


async def test_list_runs_orders_by_id_when_created_at_ties(store: Store) -> None:
    runs = [await new_run(store, "tie") for _ in range(4)]
    listed = await store.list_runs(agent="tie")
    assert listed == sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)


async def test_count_runs(store: Store) -> None:
    assert await store.count_runs() == 0
    for agent in ["a", "a", "b"]:
        await new_run(store, agent)
    assert await store.count_runs() == 3
    assert await store.count_runs(agent="a") == 2
    assert await store.count_runs(agent="c") == 0


async def test_set_run_status(store: Store) -> None:
    run = await started(store)
    await store.set_run_status(run.id, "reading the issue")
    await store.set_run_status(run.id, "opening a PR ✓")
    fetched = await store.get_run(run.id)
    assert fetched is not None and fetched.status_text == "opening a PR ✓"
    with pytest.raises(StoreError, match="no such run"):
        await store.set_run_status("ghost-3", "hello")


async def test_prune_runs_deletes_only_runs_ended_before(store: Store) -> None:
    old = await started(store)
    await store.finish_run(old.id, state=RunState.SUCCEEDED, exit_code=0)
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.002)
    recent = await new_run(store)
    await store.finish_run(recent.id, state=RunState.FAILED, exit_code=1)
    live = await started(store)

    assert await store.prune_runs(cutoff - timedelta(days=1)) == 0
    assert await store.prune_runs(cutoff) == 1
    assert await store.get_run(old.id) is None
    assert await store.prune_runs(datetime.now(UTC) + timedelta(hours=1)) == 1
    assert [r.id for r in await store.list_runs()] == [live.id]


async def test_prune_runs_refuses_naive_datetimes(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.prune_runs(datetime(2024, 1, 1))


async def test_pruning_a_parent_keeps_its_child(store: Store) -> None:
    parent = await new_run(store)
    await store.finish_run(parent.id, state=RunState.SUCCEEDED, exit_code=0)
    child = await store.create_run(
        NewRun(agent="x", trigger=TriggerKind.CALL, parent_run_id=parent.id)
    )
    assert await store.prune_runs(datetime.now(UTC) + timedelta(seconds=1)) == 1
    fetched = await store.get_run(child.id)
    assert fetched is not None and fetched.parent_run_id is None


async def test_concurrent_operations_on_one_store(store: Store) -> None:
    runs = await asyncio.gather(*(new_run(store, f"agent{i % 3}") for i in range(30)))
    await asyncio.gather(
        *(store.mark_run_running(r.id, pid=i, host="h") for i, r in enumerate(runs))
    )
    await asyncio.gather(
        *(store.finish_run(r.id, state=RunState.SUCCEEDED, exit_code=0) for r in runs)
    )
    assert await store.count_runs() == 30
    assert len(await store.list_runs(states=[RunState.SUCCEEDED], limit=100)) == 30


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    run = await new_run(store)
    with pytest.raises(RuntimeError, match="abort"):
        async with store.transaction() as tx:
            await tx.execute("set_run_status", {"id": run.id, "status_text": "never seen"})
            raise RuntimeError("abort")
    fetched = await store.get_run(run.id)
    assert fetched is not None and fetched.status_text is None


async def test_store_attributes_and_close(store_url: str) -> None:
    from corral.store import open_store

    store = await open_store(store_url)
    assert store.dialect == store_url.partition(":")[0]
    assert store.url == store_url
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.get_run("x")
