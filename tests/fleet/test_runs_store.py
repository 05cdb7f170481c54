"""Runs on runners in the store and the configuration, on both stores: a claim limited to
some agents (the control plane leaves runners' agents alone, a runner takes only its
labels'), caps exact across both kinds of claim, the runner recorded on its runs, a
runner's heartbeat renewing only what it holds; and `runsOn` validation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.engine.fleet_runs import claim_from_json, claim_json, runner_agents
from corral.errors import ConfigError
from corral.project import load_project
from corral.scheduler.service import local_agents
from corral.store import AgentSpec, NewItem, RunState, StaleFence, Store, TriggerKind
from corral.store._fleet_runs import Renewal
from tests.scheduler.helpers import write_project


async def _setup(store: Store, **scales: int) -> None:
    specs = [AgentSpec(name, scale, 100) for name, scale in scales.items()]
    await store.sync_project(specs, scale_cap=None, max_attempts=3, max_reruns=0)


async def _queue(store: Store, agent: str, n: int = 1) -> None:
    for _ in range(n):
        await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))


async def test_a_claim_limited_to_agents(store: Store) -> None:
    await _setup(store, local=5, remote=2)
    await _queue(store, "local", 2)
    await _queue(store, "remote", 3)
    mine = await store.claim("cp", lease_seconds=30, limit=10, agents=["local"])
    assert sorted(c.run.agent for c in mine) == ["local", "local"]
    assert all(c.run.runner_id is None for c in mine)
    # nothing of "remote" for the control plane, however often it asks
    assert await store.claim("cp", lease_seconds=30, limit=10, agents=["local"]) == []
    # a runner takes remote's, up to its scale across runners
    a = await store.claim("rnr-a", lease_seconds=12, limit=1, agents=["remote"], runner=True)
    b = await store.claim("rnr-b", lease_seconds=12, limit=5, agents=["remote"], runner=True)
    assert len(a) == 1 and len(b) == 1  # scale 2 across the fleet
    assert (await store.get_run(a[0].run.id)).runner_id == "rnr-a"  # type: ignore[union-attr]
    assert (await store.get_run(b[0].run.id)).runner_id == "rnr-b"  # type: ignore[union-attr]
    assert await store.claim("rnr-c", lease_seconds=12, limit=5, agents=["remote"]) == []
    # an empty list claims nothing; no restriction claims any agent
    assert await store.claim("x", lease_seconds=1, limit=5, agents=[]) == []


async def test_a_runners_heartbeat_renews_what_it_holds(store: Store) -> None:
    await _setup(store, remote=3)
    await _queue(store, "remote", 2)
    claims = await store.claim("rnr-a", lease_seconds=12, limit=2, agents=["remote"], runner=True)
    one, two = (c.run for c in claims)
    assert one.fence is not None and two.fence is not None
    held = await store.runner_holdings("rnr-a")
    assert set(held) == {one.id, two.id} and held[one.id].fence == one.fence
    reported = {one.id: one.fence, two.id: two.fence + 1, "ghost-1": 1}
    renewal = await store.renew_runner_runs("rnr-a", reported, lease_seconds=12)
    assert renewal.gone == tuple(sorted([two.id, "ghost-1"]))  # a wrong fence is not its run
    assert renewal.kill == ()
    assert not await store.runner_holds("rnr-b", one.id, one.fence)
    # ended: no longer held; a late end with the fence is refused
    await store.finalize(one.id, fence=one.fence, state=RunState.SUCCEEDED, exit_code=0)
    renewal = await store.renew_runner_runs("rnr-a", {one.id: one.fence}, lease_seconds=12)
    assert renewal.gone == (one.id,)
    with pytest.raises(StaleFence):
        await store.finalize(one.id, fence=one.fence, state=RunState.FAILED, exit_code=1)


async def test_a_runners_heartbeat_never_renews_a_lapsed_lease(store: Store) -> None:
    """Renewal takes no project row lock, so it must not race recovery: a lease that
    lapsed is not renewed (the run is answered gone) and recovery takes it back."""
    await _setup(store, remote=2)
    await _queue(store, "remote", 2)
    claims = await store.claim("rnr-a", lease_seconds=0.3, limit=2, agents=["remote"], runner=True)
    one, two = (c.run for c in claims)
    assert one.fence is not None and two.fence is not None
    assert await store.recover_lapsed() == []  # nothing lapsed: nothing taken
    await store.renew_runner_runs("rnr-a", {two.id: two.fence}, lease_seconds=30)
    await asyncio.sleep(0.5)  # one's lease lapses; two's was renewed
    reported = {one.id: one.fence, two.id: two.fence}
    renewal = await store.renew_runner_runs("rnr-a", reported, lease_seconds=30)
    assert renewal.gone == (one.id,)
    recovered = await store.recover_lapsed()
    assert [r.run.id for r in recovered if r.run is not None] == [one.id]
    assert (await store.get_run(one.id)).state is RunState.LOST  # type: ignore[union-attr]
    assert (await store.get_run(two.id)).state is not RunState.LOST  # type: ignore[union-attr]
    assert set(await store.runner_holdings("rnr-a")) == {two.id}


async def test_a_runners_heartbeat_answers_its_kill_requests(store: Store) -> None:
    await _setup(store, remote=2)
    await _queue(store, "remote", 2)
    claims = await store.claim("rnr-a", lease_seconds=12, limit=2, agents=["remote"], runner=True)
    one, two = (c.run for c in claims)
    assert one.fence is not None and two.fence is not None
    await store.request_kill(one.id)
    renewal = await store.renew_runner_runs(
        "rnr-a", {one.id: one.fence, two.id: two.fence}, lease_seconds=12
    )
    assert renewal == Renewal(gone=(), kill=(one.id,))


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_a_runners_heartbeat_does_not_wait_for_the_project_row(store: Store) -> None:
    """On PostgreSQL, where writers run side by side: a transaction holding the project
    row (an enqueue, a claim, a recovery) does not hold up a runner's lease renewal."""
    await _setup(store, remote=1)
    await _queue(store, "remote")
    [claim] = await store.claim("rnr-a", lease_seconds=12, limit=1, agents=["remote"], runner=True)
    assert claim.run.fence is not None
    async with store.transaction() as tx:
        await store.lock_project(tx)
        renewal = await asyncio.wait_for(
            store.renew_runner_runs("rnr-a", {claim.run.id: claim.run.fence}, lease_seconds=12),
            timeout=5,
        )
    assert renewal == Renewal(gone=(), kill=())


async def test_a_claim_travels_as_json(store: Store) -> None:
    await _setup(store, remote=1)
    await _queue(store, "remote")
    [claim] = await store.claim("rnr-a", lease_seconds=12, limit=1, agents=["remote"], runner=True)
    again = claim_from_json(claim_json(claim))
    assert again == claim


def test_runs_on_is_validated_and_routes_agents(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_project(
        root,
        {
            "here": {"command": "true"},
            "gpu": {"command": "true", "runsOn": ["gpu", "big", "gpu"]},
            "any": {"command": "true", "runsOn": []},
        },
    )
    project = load_project(root)
    assert project.agents["gpu"].config.runs_on == ("big", "gpu")
    assert local_agents(project) == ["here"]
    assert runner_agents(project, ["linux"]) == ["any"]
    assert runner_agents(project, ["big", "gpu", "x"]) == ["any", "gpu"]
    plain = tmp_path / "plain"
    write_project(plain, {"here": {"command": "true"}})
    assert local_agents(load_project(plain)) is None
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError) as caught:
        write_project(bad, {"gpu": {"command": "true", "runsOn": ["GPU box"]}})
    text = caught.value.render()
    assert "runsOn" in text and "bad runner label 'GPU box'" in text
    assert "agents/gpu/config.toml" in text
    wrong = tmp_path / "wrong"
    with pytest.raises(ConfigError) as caught:
        write_project(wrong, {"gpu": {"command": "true", "runsOn": "gpu"}})
    assert "runsOn" in caught.value.render()


def test_the_runner_prints_its_systemd_unit(corral: Any, tmp_path: Path) -> None:
    config = tmp_path / "runner.json"
    done = corral("runner", "start", "--print-systemd-unit", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"runner start --config {config}" in done.stdout
    assert "KillSignal=SIGTERM" in done.stdout and "[Install]" in done.stdout
    missing = corral("runner", "start", "--config", str(config))
    assert missing.returncode != 0 and "no runner config" in missing.stderr
