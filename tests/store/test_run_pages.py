"""The runs list's pages (``Store.page_runs``): newest first, keyset paging that neither
skips nor repeats a run (ties on the creation time included), and its filters; and what a
run page reads besides the run (its calls, the runs it queued). Both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from corral.store import (
    AgentSpec,
    Call,
    NewRun,
    Run,
    RunCursor,
    RunFilter,
    RunState,
    Store,
    TriggerKind,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _run_at(
    store: Store,
    at: datetime,
    agent: str = "dev",
    trigger: TriggerKind = TriggerKind.MANUAL,
    **fields: object,
) -> Run:
    store.clock = lambda: at
    return await store.create_run(NewRun(agent=agent, trigger=trigger, **fields))


async def _all_pages(store: Store, where: RunFilter, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    before: RunCursor | None = None
    while True:
        page = await store.page_runs(where, before=before, limit=limit)
        pages.append([run.id for run in page.runs])
        if page.next is None:
            return pages
        before = RunCursor.parse(page.next.token())  # through its URL form


async def test_pages_reach_every_run_once_newest_first_ties_included(store: Store) -> None:
    runs = []
    for i in range(7):
        # Three runs share each creation time: the id orders them.
        runs.append(await _run_at(store, T0 + timedelta(seconds=i // 3)))
    newest_first = sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)
    expected = [r.id for r in newest_first]

    for limit in (1, 2, 3, 7, 8):
        pages = await _all_pages(store, RunFilter(), limit)
        assert [i for page in pages for i in page] == expected, limit
        assert all(len(page) == limit for page in pages[:-1])
        # A page exactly as long as what is left is the last one: no empty page after it.
        assert pages[-1], limit
    assert len(await _all_pages(store, RunFilter(), 7)) == 1


async def test_a_new_run_does_not_shift_the_pages_after_the_cursor(store: Store) -> None:
    for i in range(4):
        await _run_at(store, T0 + timedelta(seconds=i))
    first = await store.page_runs(RunFilter(), limit=2)
    await _run_at(store, T0 + timedelta(seconds=10))  # arrives while the page is read
    assert first.next is not None
    second = await store.page_runs(RunFilter(), before=first.next, limit=2)
    seen = [r.id for r in first.runs + second.runs]
    assert len(set(seen)) == 4 and second.next is None


async def test_filters_agent_state_trigger_window_and_search(store: Store) -> None:
    await store.sync_project(
        [AgentSpec("dev", 2, 10), AgentSpec("ops", 1, 10)],
        scale_cap=None,
        max_attempts=3,
        max_reruns=2,
    )
    old = await _run_at(store, T0, "dev", prompt="Fix the flaky Test")
    hook = await _run_at(
        store,
        T0 + timedelta(hours=1),
        "ops",
        TriggerKind.WEBHOOK,
        trigger_detail={"title": "Deploy API", "receiptId": "r-1"},
    )
    live = await _run_at(store, T0 + timedelta(hours=2), "dev", TriggerKind.SCHEDULE)
    await store.mark_run_running(live.id, pid=1, host="h")
    await store.set_run_status(live.id, "Reviewing PR #7")
    await store.finish_run(old.id, state=RunState.FAILED, exit_code=1)

    async def ids(**where: object) -> list[str]:
        page = await store.page_runs(RunFilter(**where), limit=50)  # type: ignore[arg-type]
        return [run.id for run in page.runs]

    assert await ids() == [live.id, hook.id, old.id]
    assert await ids(agent="dev") == [live.id, old.id]
    assert await ids(agent="nobody") == []
    assert await ids(states=(RunState.FAILED,)) == [old.id]
    assert await ids(states=(RunState.RUNNING, RunState.STARTING)) == [live.id, hook.id]
    assert await ids(triggers=(TriggerKind.WEBHOOK,)) == [hook.id]
    assert await ids(agent="dev", triggers=(TriggerKind.SCHEDULE,)) == [live.id]
    assert await ids(since=T0 + timedelta(minutes=30)) == [live.id, hook.id]
    assert await ids(until=T0 + timedelta(minutes=90)) == [hook.id, old.id]
    assert await ids(since=T0 + timedelta(minutes=30), until=T0 + timedelta(minutes=90)) == [
        hook.id
    ]
    # Search: a run id prefix, the status, the trigger detail, the prompt; any case.
    assert await ids(search=hook.id[:7]) == [hook.id]
    assert await ids(search="pr #7") == [live.id]
    assert await ids(search="deploy api") == [hook.id]
    assert await ids(search="FLAKY test") == [old.id]
    assert await ids(search="  reviewing ") == [live.id]
    assert await ids(search="nothing like it") == []
    assert await ids(agent="dev", search="flaky") == [old.id]


async def test_a_cursor_that_is_not_one_is_refused_with_what_to_pass() -> None:
    for bad in ("", "run-1", "yesterday~run-1", "2026-03-01T12:00:00~", "2026-03-01T12:00~r"):
        with pytest.raises(ValueError, match=r"not a runs-list cursor.*next"):
            RunCursor.parse(bad)
    cursor = RunCursor(T0, "dev-1")
    assert RunCursor.parse(cursor.token()) == cursor


async def test_a_runs_calls_and_the_runs_it_queued(store: Store) -> None:
    await store.sync_project(
        [AgentSpec("dev", 2, 10), AgentSpec("reviewer", 1, 10)],
        scale_cap=None,
        max_attempts=3,
        max_reruns=2,
    )
    caller = await store.mark_run_running((await _run_at(store, T0, "dev")).id, pid=1, host="h")
    store.clock = lambda: T0 + timedelta(seconds=1)
    call = await store.create_call(caller.id, "reviewer", "look at <this>", max_depth=3)
    assert isinstance(call, Call)
    made, answered = await store.calls_of_run(caller.id)
    assert [c.context for c in made] == ["look at <this>"] and answered is None
    callee = await _run_at(
        store, T0 + timedelta(seconds=2), "reviewer", TriggerKind.CALL, parent_run_id=caller.id
    )
    assert [r.id for r in await store.list_child_runs(caller.id)] == [callee.id]
    assert await store.list_child_runs(callee.id) == []
    assert await store.calls_of_run("no-such-run") == ([], None)
