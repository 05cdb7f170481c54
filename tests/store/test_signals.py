"""Conformance suite for what a run signals about itself through the agent API: its secret
(stored as a hash only), status text, return value and exit request, on both stores."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from corral.errors import StoreError
from corral.store import (
    AgentSpec,
    Claim,
    NewItem,
    Run,
    RunState,
    Store,
    TriggerKind,
)
from tests.store.conftest import Clock, live_run

LEASE = 60.0
RawSql = Callable[[str, str], list[tuple[Any, ...]]]


async def claimed(store: Store) -> Claim:
    await store.sync_project([AgentSpec("a", 5, 5)], scale_cap=None, max_attempts=2, max_reruns=0)
    item = (await store.enqueue(NewItem("a", TriggerKind.MANUAL))).item
    [claim] = await store.claim("s1", lease_seconds=LEASE, limit=1, item_id=item.id)
    await store.mark_run_running(claim.run.id, pid=1, host="h")
    return claim


async def ended_run(store: Store) -> Run:
    run = await live_run(store)
    return await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=0)


def unchanged_but(run: Run, after: Run, **changes: Any) -> None:
    """``after`` is ``run`` with ``changes`` and nothing else."""
    assert after == dataclasses.replace(run, **changes)


# -- the secret ------------------------------------------------------------------------------


def test_a_run_record_never_carries_the_secret() -> None:
    names = [field.name for field in dataclasses.fields(Run)]
    assert not [name for name in names if "secret" in name.lower()]
    assert not [name for name in dir(Run) if "secret" in name.lower()]


async def test_a_run_is_found_by_its_secret_hash(store: Store) -> None:
    run, other = await live_run(store), await live_run(store)
    returned = await store.set_run_secret(run.id, "hash-1")
    assert returned == run
    await store.set_run_secret(other.id, "hash-2")
    assert await store.run_for_secret("hash-1") == run
    assert await store.run_for_secret("hash-2") == other
    assert await store.run_for_secret("hash-3") is None


async def test_the_hash_is_stored_as_given(store: Store, store_url: str, raw_sql: RawSql) -> None:
    run = await live_run(store)
    await store.set_run_secret(run.id, "sha256:abc")
    rows = raw_sql(store_url, f"SELECT secret_hash FROM corral_runs WHERE id = '{run.id}'")
    assert rows == [("sha256:abc",)]


async def test_a_run_of_a_claim_gets_a_secret(store: Store) -> None:
    claim = await claimed(store)
    await store.set_run_secret(claim.run.id, "h")
    found = await store.run_for_secret("h")
    assert found is not None and found.id == claim.run.id and found.state is RunState.RUNNING


async def test_a_new_secret_replaces_the_old_one(store: Store) -> None:
    run = await live_run(store)
    await store.set_run_secret(run.id, "old")
    await store.set_run_secret(run.id, "new")
    assert await store.run_for_secret("old") is None
    found = await store.run_for_secret("new")
    assert found is not None and found.id == run.id


async def test_a_secret_hash_belongs_to_one_run(store: Store) -> None:
    run, other = await live_run(store), await live_run(store)
    await store.set_run_secret(run.id, "same")
    with pytest.raises(StoreError):
        await store.set_run_secret(other.id, "same")
    found = await store.run_for_secret("same")
    assert found is not None and found.id == run.id


async def test_the_run_is_found_by_its_secret_after_it_ended(store: Store) -> None:
    run = await live_run(store)
    await store.set_run_secret(run.id, "h")
    await store.finish_run(run.id, state=RunState.FAILED, exit_code=1)
    found = await store.run_for_secret("h")
    assert found is not None and found.id == run.id and found.state is RunState.FAILED


async def test_an_ended_run_gets_no_secret(store: Store) -> None:
    run = await ended_run(store)
    with pytest.raises(StoreError, match=rf"run {run.id}: it has ended \(succeeded\)"):
        await store.set_run_secret(run.id, "h")
    assert await store.run_for_secret("h") is None
    with pytest.raises(StoreError, match="no run 'ghost'"):
        await store.set_run_secret("ghost", "h")


# -- status ----------------------------------------------------------------------------------


async def test_set_status_records_the_text_and_when(store: Store, clock: Clock) -> None:
    claim = await claimed(store)
    before = await store.get_run(claim.run.id)
    assert before is not None and before.status_text is None and before.status_at is None
    clock.advance(7)
    after = await store.set_status(claim.run.id, "3 of 7 repositories done")
    unchanged_but(before, after, status_text="3 of 7 repositories done", status_at=clock.now)
    assert await store.get_run(claim.run.id) == after
    clock.advance(1)
    again = await store.set_status(claim.run.id, "4 of 7")
    assert (again.status_text, again.status_at) == ("4 of 7", clock.now)


async def test_set_status_is_refused_after_the_run_ended(store: Store, clock: Clock) -> None:
    run = await live_run(store)
    await store.set_status(run.id, "working")
    ended = await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=0)
    clock.advance(1)
    with pytest.raises(StoreError, match=rf"cannot set the status of run {run.id}: it has ended"):
        await store.set_status(run.id, "late")
    assert await store.get_run(run.id) == ended
    assert ended.status_text == "working"
    with pytest.raises(StoreError, match="no run 'ghost'"):
        await store.set_status("ghost", "x")


# -- return value ----------------------------------------------------------------------------


async def test_set_return_value(store: Store) -> None:
    run = await live_run(store)
    after = await store.set_return_value(run.id, "first")
    unchanged_but(run, after, return_value="first")
    assert (await store.set_return_value(run.id, "")).return_value == ""
    last = await store.set_return_value(run.id, "last\nline")
    assert (await store.get_run(run.id)) == last and last.return_value == "last\nline"


async def test_set_return_value_is_refused_after_the_run_ended(store: Store) -> None:
    run = await ended_run(store)
    with pytest.raises(StoreError, match=r"cannot set the return value of run .*: it has ended"):
        await store.set_return_value(run.id, "late")
    after = await store.get_run(run.id)
    assert after is not None and after.return_value is None


# -- exit request ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 15, 255])
async def test_request_exit_records_the_code(store: Store, code: int) -> None:
    run = await live_run(store)
    after = await store.request_exit(run.id, code)
    unchanged_but(run, after, exit_requested=code)
    assert await store.get_run(run.id) == after


async def test_a_later_exit_request_replaces_the_code(store: Store) -> None:
    run = await live_run(store)
    await store.request_exit(run.id, 3)
    assert (await store.request_exit(run.id, 0)).exit_requested == 0


@pytest.mark.parametrize("code", [-1, 256, 1000])
async def test_an_exit_code_outside_0_to_255_is_refused(store: Store, code: int) -> None:
    run = await live_run(store)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        await store.request_exit(run.id, code)
    assert await store.get_run(run.id) == run


async def test_request_exit_is_refused_after_the_run_ended(store: Store) -> None:
    run = await ended_run(store)
    with pytest.raises(StoreError, match=rf"cannot end run {run.id}: it has ended \(succeeded\)"):
        await store.request_exit(run.id, 0)
    after = await store.get_run(run.id)
    assert after is not None and after.exit_requested is None


async def test_signals_are_refused_for_a_finalised_claim(store: Store) -> None:
    claim = await claimed(store)
    assert claim.run.fence is not None
    await store.finalize(claim.run.id, fence=claim.run.fence, state=RunState.KILLED, exit_code=None)
    signals: list[Callable[[], Awaitable[Run]]] = [
        lambda: store.set_status(claim.run.id, "x"),
        lambda: store.set_return_value(claim.run.id, "x"),
        lambda: store.request_exit(claim.run.id, 1),
        lambda: store.set_run_secret(claim.run.id, "x"),
    ]
    for signal in signals:
        with pytest.raises(StoreError, match=r"it has ended \(killed\)"):
            await signal()
