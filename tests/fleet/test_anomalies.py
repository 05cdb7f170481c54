"""The anomalies a run shows, on both stores: a crash loop, a failed hook and a budget
overrun recorded at a run's end (a control plane's runs through a real scheduler and
gateway, runners' runs through the same ``finalize`` the runs API calls), a stuck run
and an expired lock found by the supervision sweep; each recorded once per episode,
listed until resolved, and nothing recorded for runs that succeed."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.scheduler.anomalies import STUCK_MARGIN, sweep
from corral.store import (
    AgentSpec,
    Anomaly,
    AnomalyKind,
    NewItem,
    Run,
    RunState,
    Store,
    TriggerKind,
)
from corral.store._anomalies import CRASH_LOOP_RUNS, hook_failure
from tests.fleet.fleetkit import control_plane, join_runner, start_runner
from tests.fleet.fleetkit import wait_for as wait_until
from tests.gateway.fleet import running_fleet
from tests.scheduler.helpers import wait_for, write_project


async def _open(store: Store, kind: AnomalyKind) -> list[Anomaly]:
    return [a for a in await store.list_anomalies() if a.kind is kind]


async def _has_lines(store: Store, anomaly_id: int) -> bool:
    found = [a for a in await store.list_anomalies() if a.id == anomaly_id]
    return bool(found) and "lastLines" in (found[0].evidence or {})


async def _settled(
    store: Store, kind: AnomalyKind, occurrences: int = 1, count: int = 1
) -> list[Anomaly]:
    """The open anomalies of ``kind`` once there are ``count`` and the newest has seen
    ``occurrences`` (a run's anomalies are recorded just after its end)."""

    async def ready() -> bool:
        found = await _open(store, kind)
        return len(found) == count and (found[0].evidence or {}).get("occurrences") == occurrences

    await wait_for(ready, timeout=10)
    return await _open(store, kind)


async def _setup(store: Store, **scales: int) -> None:
    specs = [AgentSpec(name, scale, 100) for name, scale in scales.items()]
    await store.sync_project(specs, scale_cap=None, max_attempts=1, max_reruns=0)


async def _claim_one(store: Store, agent: str, runner: str | None = None):  # type: ignore[no-untyped-def]
    await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))
    owner = runner or "cp"
    [claim] = await store.claim(
        owner, lease_seconds=600, limit=1, agents=[agent], runner=runner is not None
    )
    return await store.mark_run_running(claim.run.id, pid=None, host="h1"), claim.run.fence


async def test_a_crash_loop_and_a_failed_hook_on_the_control_plane(
    tmp_path: Path, store: Store
) -> None:
    agents = {
        "crasher": {"command": "echo boom; exit 3", "scale": 1},
        "hooked": {"command": "echo never", "scale": 1},
        "fine": {"command": "true", "scale": 1},
        "posted": {"command": "true", "scale": 1},
    }
    tables = {
        "hooked": '[hooks]\npre = ["echo hook-said-no; exit 7"]',
        "posted": '[hooks]\npost = ["echo post-said-no; exit 9"]',
    }
    async with running_fleet(tmp_path / "p", store, agents, tables=tables) as fleet:
        for _ in range(CRASH_LOOP_RUNS + 1):
            await fleet.trigger("fine")
        await fleet.finished("fine", CRASH_LOOP_RUNS + 1)
        assert await store.list_anomalies() == []  # successes record nothing
        for _ in range(CRASH_LOOP_RUNS - 1):
            await fleet.trigger("crasher")
        await fleet.finished("crasher", CRASH_LOOP_RUNS - 1)
        assert await _open(store, AnomalyKind.CRASH_LOOP) == []  # not yet 5 in a row
        await fleet.trigger("crasher")
        crashed = await fleet.finished("crasher", CRASH_LOOP_RUNS)
        [loop] = await _settled(store, AnomalyKind.CRASH_LOOP)
        assert loop.subject == "agent:crasher"
        assert loop.evidence is not None
        runs = loop.evidence["runs"]
        assert [r["run"] for r in runs] == [r.id for r in reversed(crashed)]
        assert {r["exitCode"] for r in runs} == {3} and loop.evidence["agents"] == ["crasher"]
        # the same episode: a sixth failure updates it, no second row
        await fleet.trigger("crasher")
        await fleet.finished("crasher", CRASH_LOOP_RUNS + 1)
        [again] = await _settled(store, AnomalyKind.CRASH_LOOP, occurrences=2)
        assert again.id == loop.id and again.evidence["occurrences"] == 2  # type: ignore[index]

        for _ in range(2):
            await fleet.trigger("hooked")
        hooked = await fleet.finished("hooked", 2)
        assert all(r.state is RunState.FAILED for r in hooked)
        [hook] = await _settled(store, AnomalyKind.HOOK_FAILED, occurrences=2)
        await wait_for(lambda: _has_lines(store, hook.id), timeout=10)
        [hook] = await _open(store, AnomalyKind.HOOK_FAILED)
        assert hook.subject == "hooked:pre hook 1"
        evidence = hook.evidence or {}
        assert evidence["exitCode"] == 7 and evidence["agent"] == "hooked"
        assert evidence["run"] == hooked[-1].id and evidence["first"] == hooked[0].id
        assert evidence["occurrences"] == 2 and evidence["runner"] is None
        assert "hook-said-no" in "\n".join(evidence["lastLines"])

        # resolved with a note: off the open list, kept in the full one
        from corral.engine import fleet as fleet_engine

        await fleet_engine.resolve_anomaly(store, hook.id, "fixed the hook", actor="op")
        assert await _open(store, AnomalyKind.HOOK_FAILED) == []
        [done] = [a for a in await store.list_anomalies(include_resolved=True) if a.id == hook.id]
        assert done.resolution == "fixed the hook" and not done.open
        # the next failure is a new episode
        await fleet.trigger("hooked")
        await fleet.finished("hooked", 3)
        [new] = await _settled(store, AnomalyKind.HOOK_FAILED)
        assert new.id != hook.id

        # a post hook that failed changes nothing of its run, and is an anomaly too
        await fleet.trigger("posted")
        [posted] = await fleet.finished("posted", 1)
        assert posted.state is RunState.SUCCEEDED
        await _settled(store, AnomalyKind.HOOK_FAILED, count=2)
        [post] = [a for a in await _open(store, AnomalyKind.HOOK_FAILED) if a.id != new.id]
        evidence = post.evidence or {}
        assert post.subject == "posted:post hook 1" and evidence["run"] == posted.id
        assert evidence["exitCode"] == 9 and evidence["runState"] == "succeeded"
        assert any("post-said-no" in line for line in evidence["lastLines"])


async def test_a_runners_crash_loop_and_a_budget_overrun(store: Store) -> None:
    await _setup(store, remote=10, other=10)
    ended = []
    for n in range(CRASH_LOOP_RUNS):
        agent = "remote" if n % 2 else "other"
        run, fence = await _claim_one(store, agent, runner="rnr-a")
        await store.finalize(run.id, fence=fence, state=RunState.FAILED, exit_code=n + 1)
        ended.append(run)
        # a failure on another runner is not this runner's loop
        other, fence = await _claim_one(store, "remote", runner="rnr-b")
        state = RunState.FAILED if n else RunState.SUCCEEDED
        await store.finalize(other.id, fence=fence, state=state, exit_code=1)
    [loop] = await _open(store, AnomalyKind.CRASH_LOOP)
    assert loop.subject == "rnr-a"
    evidence = loop.evidence or {}
    assert [r["run"] for r in evidence["runs"]] == [r.id for r in reversed(ended)]
    assert [r["exitCode"] for r in evidence["runs"]] == [5, 4, 3, 2, 1]
    assert evidence["agents"] == ["other", "remote"] and evidence["runner"] == "rnr-a"

    run, fence = await _claim_one(store, "remote", runner="rnr-c")
    await store.record_usage(
        run.id,
        input_tokens=900,
        output_tokens=300,
        cache_read_tokens=0,
        cache_write_tokens=0,
        cost_usd=0.42,
        budget="tokens",
    )
    error = "stopped by the tokens budget (1000 tokens)"
    await store.finalize(run.id, fence=fence, state=RunState.FAILED, exit_code=1, error=error)
    [over] = await _open(store, AnomalyKind.BUDGET_OVERRUN)
    assert over.subject == "remote:tokens"
    evidence = over.evidence or {}
    assert evidence["budget"] == "tokens" and evidence["error"] == error
    assert evidence["limit"] == "1000 tokens"
    assert evidence["spent"]["costUsd"] == 0.42 and evidence["spent"]["outputTokens"] == 300
    assert evidence["runner"] == "rnr-c" and evidence["run"] == run.id


async def test_a_stuck_run_and_an_expired_lock(tmp_path: Path, store: Store) -> None:
    project = write_project(
        tmp_path / "p", {"slow": {"command": "sleep 1", "scale": 2, "timeout": 60}}
    )
    await _setup(store, slow=2)
    stuck, _ = await _claim_one(store, "slow", runner="rnr-a")
    holder, _ = await _claim_one(store, "slow")
    grant = await store.acquire_lock("repo:x", holder.id, ttl_seconds=30)
    assert await sweep(store, project, kill_grace=10) == []  # nothing is late yet

    real_clock = store.clock
    try:
        store.clock = lambda: real_clock() + timedelta(seconds=31)  # the lock's lease is out
        [opened] = await sweep(store, project, kill_grace=10)
        assert opened.kind is AnomalyKind.LOCK_EXPIRED
        store.clock = lambda: real_clock() + timedelta(seconds=60 + 10 + STUCK_MARGIN + 1)
        opened2 = await sweep(store, project, kill_grace=10)  # both runs are past it now
        assert {(a.kind, a.subject) for a in opened2} == {
            (AnomalyKind.RUN_STUCK, stuck.id),
            (AnomalyKind.RUN_STUCK, holder.id),
        }
        # seen again: the same episodes, nothing new
        assert await sweep(store, project, kill_grace=10) == []
    finally:
        store.clock = real_clock
    [late] = [a for a in await _open(store, AnomalyKind.RUN_STUCK) if a.subject == stuck.id]
    evidence = late.evidence or {}
    assert evidence["timeoutSeconds"] == 60 and evidence["runner"] == "rnr-a"
    assert evidence["started"] == stuck.started_at.isoformat()  # type: ignore[union-attr]
    assert len(await _open(store, AnomalyKind.LOCK_EXPIRED)) == 1
    [expired] = await _open(store, AnomalyKind.LOCK_EXPIRED)
    evidence = expired.evidence or {}
    assert expired.subject == "repo:x" and evidence["run"] == holder.id
    assert evidence["agent"] == "slow" and evidence["token"] == grant.token  # type: ignore[union-attr]
    assert evidence["heldSince"] == grant.acquired_at.isoformat()  # type: ignore[union-attr]
    assert evidence["expiredAt"] == grant.expires_at.isoformat()  # type: ignore[union-attr]
    assert evidence["host"] == "h1"


async def test_the_scheduler_finds_an_expired_lock(tmp_path: Path, store: Store) -> None:
    """A real run takes a lock with a 1 s lease and keeps it without a heartbeat: the
    running scheduler's sweep records it, once, naming the holder."""
    agents = {"holder": {"command": 'rlock "repo:z" && sleep 4', "scale": 1}}
    async with running_fleet(
        tmp_path / "p", store, agents, project_toml="resourceLockTimeout = 1\n"
    ) as fleet:
        await fleet.trigger("holder")
        [expired] = await _settled(store, AnomalyKind.LOCK_EXPIRED)
        [run] = await fleet.finished("holder", 1)
    evidence = expired.evidence or {}
    assert expired.subject == "repo:z" and evidence["run"] == run.id
    assert evidence["agent"] == "holder" and evidence["runState"] == "running"
    assert run.state is RunState.SUCCEEDED
    assert len(await _open(store, AnomalyKind.LOCK_EXPIRED)) == 1


async def test_a_released_lock_is_no_anomaly(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"slow": {"command": "sleep 1", "scale": 1}})
    await _setup(store, slow=1)
    holder, fence = await _claim_one(store, "slow")
    await store.acquire_lock("repo:y", holder.id, ttl_seconds=30)
    await store.finalize(holder.id, fence=fence, state=RunState.SUCCEEDED, exit_code=0)
    real_clock = store.clock
    store.clock = lambda: real_clock() + timedelta(seconds=3600)
    try:
        assert await sweep(store, project, kill_grace=10) == []
    finally:
        store.clock = real_clock
    assert await store.list_anomalies() == []


async def test_one_open_anomaly_per_episode_under_concurrency(store: Store) -> None:
    async def seen(n: int) -> bool:
        _, new = await store.record_episode(
            AnomalyKind.RUN_STUCK, "run-1", {"run": "run-1", "seen": n}
        )
        return new

    news = await asyncio.gather(*(seen(n) for n in range(8)))
    assert news.count(True) == 1
    [one] = await _open(store, AnomalyKind.RUN_STUCK)
    assert (one.evidence or {})["occurrences"] == 8
    # the same occurrence seen again (``same``) leaves it as it is
    _, new = await store.record_episode(
        AnomalyKind.RUN_STUCK, "run-1", {"run": "run-1"}, same="run"
    )
    assert not new
    [still] = await _open(store, AnomalyKind.RUN_STUCK)
    assert still.evidence == one.evidence


async def test_a_daily_cost_cap_on_the_control_plane(tmp_path: Path, store: Store) -> None:
    """The scheduler refuses a run queued before its agent's day's spend reached the cap:
    the run fails with the ``daily cost`` budget, an overrun with the cap and the spend."""
    agents = {"capped": {"command": "sleep 1", "scale": 1}}
    tables = {"capped": "[budget]\ndailyCost = 0.5"}
    async with running_fleet(tmp_path / "p", store, agents, tables=tables) as fleet:
        await fleet.trigger("capped")
        await fleet.trigger("capped")  # queued while the day's spend is under the cap

        async def started() -> list[Run]:
            return [r for r in await store.list_runs(agent="capped") if r.started_at]

        await wait_for(started, timeout=10)
        [first] = await started()
        await store.record_usage(  # what the first run spends reaches the cap
            first.id,
            input_tokens=10,
            output_tokens=10,
            cache_read_tokens=0,
            cache_write_tokens=0,
            cost_usd=0.75,
        )
        ended = await fleet.finished("capped", 2)
        assert ended[0].state is RunState.SUCCEEDED
        assert ended[-1].state is RunState.FAILED and ended[-1].budget == "daily cost"
        [over] = await _settled(store, AnomalyKind.BUDGET_OVERRUN)
    evidence = over.evidence or {}
    assert over.subject == "capped:daily cost" and evidence["run"] == ended[-1].id
    assert evidence["limit"] == "$0.50 a day" and evidence["spentToday"] == "$0.75"
    assert evidence["cap"] == "agent"


def test_hook_failures_are_read_from_the_error() -> None:
    found = hook_failure(
        "pre hook 2 (`make lint`) exited with code 2; its output is in the run log"
    )
    assert found == {
        "hook": "pre hook 2",
        "command": "make lint",
        "exitCode": 2,
        "timedOut": False,
    }
    late = hook_failure(
        "pre hook 1 (`sleep 9`) timed out after 300 s; its output is in the run log"
    )
    assert late is not None and late["timedOut"] and late["exitCode"] is None
    assert hook_failure("exit 3") is None and hook_failure(None) is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_runners_failing_hook_through_corral_start(tmp_path: Path, store_url: str) -> None:
    """A real control plane and runner: the runner's runs fail in a pre hook; the runs
    API's end records the hook (once, five occurrences) and, after five, the runner's
    crash loop. (A pre hook's output does not reach the control plane's log: the runs
    API refuses a log before the run is marked running, so no log lines here.)"""
    root = tmp_path / "project"
    write_project(
        root,
        {"remote": {"command": ["/bin/sh", "-c", "true"], "runsOn": ["linux"], "scale": 1}},
        "[fleet]\nheartbeatSeconds = 1\nofflineAfterSeconds = 30\n",
        {"remote": '[hooks]\npre = ["echo remote-hook-said-no; exit 4"]'},
    )
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        runner = join_runner(plane, tmp_path, "r1", ["linux"], 1)
        config = json.loads(runner.config.read_text())
        runner.config.write_text(json.dumps(config | {"drainSeconds": 1}))
        start_runner(runner)
        try:
            for _ in range(CRASH_LOOP_RUNS):
                plane.trigger("remote")

            def anomalies() -> list[dict[str, Any]]:
                found = plane.control("GET", "/fleet/anomalies").json()["anomalies"]
                return [a for a in found if a["kind"] in ("crash_loop", "hook_failed")]

            def settled() -> list[dict[str, Any]] | None:
                found = anomalies()
                kinds = sorted(a["kind"] for a in found)
                hook = [a for a in found if a["kind"] == "hook_failed"]
                if kinds != ["crash_loop", "hook_failed"]:
                    return None
                evidence = hook[0]["evidence"]
                return found if evidence["occurrences"] == CRASH_LOOP_RUNS else None

            found = wait_until(settled, 120)
        finally:
            runner.stop()
    [loop] = [a for a in found if a["kind"] == "crash_loop"]
    [hook] = [a for a in found if a["kind"] == "hook_failed"]
    assert loop["subject"] == runner.runner_id and loop["open"]
    assert len(loop["evidence"]["runs"]) == CRASH_LOOP_RUNS
    assert {r["exitCode"] for r in loop["evidence"]["runs"]} == {4}
    assert hook["subject"] == "remote:pre hook 1"
    evidence = hook["evidence"]
    assert evidence["exitCode"] == 4 and evidence["runner"] == runner.runner_id
    assert "echo remote-hook-said-no" in evidence["command"]
