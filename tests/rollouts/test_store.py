"""Rollouts in both stores: started from the current bundle for the agents it changes,
one at a time; the canary assigned only while its rollout runs; ended once (one of two
evaluators wins); promotion moves the head; everything audited. And the dashboard page."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from corral.bundles import Packed, pack
from corral.errors import StoreConflict, StoreUnavailable
from corral.project import Project
from corral.scheduler import rollouts
from corral.scheduler.service import Scheduler, SchedulerOptions, sync_config
from corral.store import NewItem, RunState, Store, TriggerKind
from tests.dashboard.support import DashFleet
from tests.scheduler.helpers import wait_for, write_project


def two_bundles(tmp_path: Path) -> tuple[Project, Packed, Packed]:
    root = tmp_path / "p"
    project = write_project(root, {"dev": {"command": "true"}, "ops": {"command": "true"}})
    first = pack(root)
    (root / "agents" / "dev" / "SKILL.md").write_text("---\nname: dev\n---\nchanged\n")
    return project, first, pack(root)


async def test_a_rollout_from_start_to_end(tmp_path: Path, store: Store) -> None:
    project, first, second = two_bundles(tmp_path)
    await sync_config(store, project)
    with pytest.raises(StoreConflict, match="no bundle is current yet"):
        await store.publish_canary(
            second.hash, second.data, second.manifest(), share=0.5, rule={}, actor="t"
        )
    await store.publish_bundle(first.hash, first.data, first.manifest(), actor="t")
    with pytest.raises(StoreConflict, match="changes no agent"):
        await store.publish_canary(
            first.hash, first.data, first.manifest(), share=0.5, rule={}, actor="t"
        )
    rollout = await store.publish_canary(
        second.hash, second.data, second.manifest(), share=1.0, rule={"min_runs": 5},
        actor="t", note="shorter",
    )  # fmt: skip
    assert rollout.agents == ("dev",) and rollout.baseline == first.hash and rollout.running
    assert (await store.bundle_head()).hash == first.hash  # type: ignore[union-attr]
    with pytest.raises(StoreConflict, match="is running"):
        await store.publish_canary(
            second.hash, second.data, second.manifest(), share=0.5, rule={}, actor="t"
        )

    # share 1.0: every claimed run of dev is the canary's, none of ops
    for agent in ("dev", "ops"):
        await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))
    claims = await store.claim("me", lease_seconds=30, limit=10, bundle=first.hash)
    assigned = await rollouts.assign(store, rollout, claims)
    by_agent = {c.run.agent: c.run.bundle for c in assigned}
    assert by_agent == {"dev": second.hash, "ops": first.hash}
    stored = await store.get_run(next(c.run.id for c in assigned if c.run.agent == "dev"))
    assert stored is not None and stored.bundle == second.hash

    shown = await rollouts.compare(store, rollout)
    assert shown["versions"]["canary"]["live"] == 1
    assert shown["decision"]["action"] == "wait"

    ended = await store.end_rollout(rollout.id, "rolled_back", actor="a", reason="worse")
    assert ended is not None and ended.state == "rolled_back" and ended.ended_by == "a"
    assert await store.end_rollout(rollout.id, "promoted", actor="b", reason="x") is None
    # ended: nothing is assigned any more
    await store.enqueue(NewItem(agent="dev", trigger=TriggerKind.MANUAL))
    late = await store.claim("me", lease_seconds=30, limit=10, bundle=first.hash)
    assert await store.assign_canary(rollout.id, [c.run.id for c in late]) == set()
    assert (await store.bundle_head()).hash == first.hash  # type: ignore[union-attr]

    again = await store.publish_canary(
        second.hash, second.data, second.manifest(), share=0.1, rule={}, actor="t"
    )
    promoted = await rollouts.end_by_hand(store, None, "promoted", actor="op")
    assert promoted.id == again.id and promoted.reason == "promoted by hand"
    assert (await store.bundle_head()).hash == second.hash  # type: ignore[union-attr]
    with pytest.raises(LookupError, match="no rollout is running"):
        await rollouts.end_by_hand(store, None, "rolled_back", actor="op")
    actions = [e.action for e in await store.list_audit(limit=50)]
    for action in ("rollout.start", "rollout.rollback", "rollout.promote", "bundle.apply"):
        assert action in actions
    assert [r.id for r in await store.list_rollouts()] == [again.id, rollout.id]


async def test_the_dashboard_compares_the_versions(
    tmp_path: Path, fleet: DashFleet, signed_in: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    http, _ = signed_in
    empty = await http.get("/dashboard/rollouts")
    assert empty.status_code == 200 and "No rollouts yet" in empty.text
    copy = tmp_path / "copy"
    shutil.copytree(fleet.root, copy, ignore=shutil.ignore_patterns(".corral", "out"))
    first = pack(copy)
    await fleet.store.publish_bundle(first.hash, first.data, first.manifest(), actor="t")
    agent = sorted((copy / "agents").iterdir())[0]
    (agent / "SKILL.md").write_text(f"---\nname: {agent.name}\n---\nnew words\n")
    second = pack(copy)
    await fleet.store.publish_canary(
        second.hash, second.data, second.manifest(), share=0.25, rule={}, actor="t"
    )
    page = await http.get("/dashboard/rollouts")
    assert page.status_code == 200
    assert "Rollout 1: running" in page.text and "25% of the runs of " + agent.name in page.text
    assert 'class="version-baseline"' in page.text and 'class="version-canary"' in page.text
    assert "Rule: <strong>wait</strong>" in page.text


async def test_a_failed_canary_assignment_still_launches_the_claimed_runs(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, first, second = two_bundles(tmp_path)
    await sync_config(store, project)
    await store.publish_bundle(first.hash, first.data, first.manifest(), actor="t")
    rollout = await store.publish_canary(
        second.hash, second.data, second.manifest(), share=1.0, rule={}, actor="t"
    )

    async def blip(rollout_id: int, run_ids: object) -> set[str]:
        raise StoreUnavailable("connection lost")

    # the store fails the assignment only (a blip after the claim committed)
    monkeypatch.setattr(store, "assign_canary", blip)
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        await wait_for(lambda: scheduler.rollout is not None, 10)
        assert scheduler.rollout == rollout
        queued = await store.enqueue(NewItem(agent="dev", trigger=TriggerKind.MANUAL))

        async def ended() -> bool:
            runs = await store.list_runs(limit=10)
            return any(r.item_id == queued.item.id and r.state.is_terminal for r in runs)

        await wait_for(ended, 10)  # launched and ended, not left to lapse
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    (run,) = [r for r in await store.list_runs(limit=10) if r.item_id == queued.item.id]
    assert run.state is RunState.SUCCEEDED and run.bundle == first.hash  # the baseline


async def test_a_push_during_a_rollout_ends_it_and_promotion_never_undoes_it(
    tmp_path: Path, store: Store
) -> None:
    project, first, second = two_bundles(tmp_path)
    (tmp_path / "p" / "agents" / "ops" / "SKILL.md").write_text("---\nname: ops\n---\nC\n")
    third = pack(tmp_path / "p")
    await sync_config(store, project)
    await store.publish_bundle(first.hash, first.data, first.manifest(), actor="t")

    # A -> B running; a plain push of C ends it (halted) as it makes C current
    rollout = await store.publish_canary(
        second.hash, second.data, second.manifest(), share=0.5, rule={}, actor="t"
    )
    await store.publish_bundle(third.hash, third.data, third.manifest(), actor="op")
    halted = await store.get_rollout(rollout.id)
    assert halted is not None and halted.state == "halted" and halted.ended_by == "op"
    assert halted.reason == f"superseded by push of {third.hash}"
    assert await store.running_rollout() is None
    # the evaluator's promotion comes too late: C stays current
    assert await store.end_rollout(rollout.id, "promoted", actor="ev", reason="x") is None
    assert (await store.bundle_head()).hash == third.hash  # type: ignore[union-attr]

    # C -> B running; an apply of A ends it the same way
    again = await store.publish_canary(
        second.hash, second.data, second.manifest(), share=0.5, rule={}, actor="t"
    )
    await store.set_bundle_head(first.hash, actor="op")
    applied = await store.get_rollout(again.id)
    assert applied is not None and applied.state == "halted"
    assert applied.reason == f"superseded by apply of {first.hash}"

    # A -> B running and the head moved behind its back: promotion halts it instead
    last = await store.publish_canary(
        second.hash, second.data, second.manifest(), share=0.5, rule={}, actor="t"
    )
    now = store.encode_time(store.now())
    await store.statement("set_bundle_head", {"hash": third.hash, "now": now, "actor": "x"})
    ended = await store.end_rollout(last.id, "promoted", actor="ev", reason="better")
    assert ended is not None and ended.state == "halted"
    assert ended.reason is not None and "not promoted" in ended.reason
    assert (await store.bundle_head()).hash == third.hash  # type: ignore[union-attr]
    halts = [e for e in await store.list_audit(limit=50) if e.action == "rollout.halt"]
    assert {e.subject for e in halts} == {str(rollout.id), str(again.id), str(last.id)}
