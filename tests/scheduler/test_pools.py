"""The autoscaler sizes agents' pools end to end (scheduler/pools.py, migration 0022),
on both stores, with real runs: the live run processes are counted from /proc."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import timedelta
from pathlib import Path

from corral.engine.token import hash_token
from corral.project import Project
from corral.scheduler.pools import PoolSizer
from corral.scheduler.service import Scheduler, SchedulerOptions, sync_config
from corral.store import (
    NewItem,
    NewRunner,
    Runner,
    RunnerState,
    RunState,
    Store,
    TriggerKind,
    open_store,
)
from tests.scheduler.helpers import all_runs, max_overlap, wait_for, write_project
from tests.scheduler.procs import SchedulerProcess

OPTIONS = SchedulerOptions(
    poll_interval=0.05, supervise_every=0.05, drain_grace=5, kill_grace=1, pool_tick=0.2
)
#: Each run sleeps as long as its prompt says ("sleep=N;", seconds).
RUN_SH = """t=$(sed -n 's/.*sleep=\\([0-9.]*\\);.*/\\1/p' "$CORRAL_PROMPT_FILE" | head -n 1)
sleep "$t"
"""


class ProcessCounter(threading.Thread):
    """Counts the live processes of an agent's runs (by CORRAL_AGENT_DIR in their
    environment) every few milliseconds; keeps the most seen at once."""

    def __init__(self, agent_dir: Path) -> None:
        super().__init__(daemon=True)
        self.wanted = f"CORRAL_AGENT_DIR={agent_dir}".encode()
        self.halt = threading.Event()
        self.most = 0
        self.samples = 0
        self.now = 0

    def count(self) -> int:
        runs: set[bytes] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if self.wanted in fields:
                runs.add(next((f for f in fields if f.startswith(b"CORRAL_RUN_ID=")), b""))
        return len(runs)

    def run(self) -> None:
        while not self.halt.is_set():
            self.now = self.count()
            self.most = max(self.most, self.now)
            self.samples += 1
            self.halt.wait(0.01)

    def __enter__(self) -> ProcessCounter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(5)


def pooled_project(root: Path, scale: str, project_toml: str = "") -> Project:
    project = write_project(
        root,
        {"burst": {"command": 'sh "$CORRAL_AGENT_DIR/run.sh"'}},
        project_toml,
        tables={"burst": scale},
    )
    (root / "agents" / "burst" / "run.sh").write_text(RUN_SH)
    return project


async def _run_scheduler(scheduler: Scheduler, stop: asyncio.Event) -> None:
    await scheduler.start()
    await scheduler.run(stop, stop)


async def _ended(store: Store, count: int) -> bool:
    return len([r for r in await all_runs(store) if r.state.is_terminal]) >= count


async def test_a_reactive_pool_grows_to_max_then_shrinks_to_min_without_killing_a_run(
    tmp_path: Path, store: Store
) -> None:
    project = pooled_project(
        tmp_path / "p",
        '[scale]\nmin = 0\nmax = 4\npolicy = "reactive"\nstabilization = 2\nscaleDown = 0.3\n',
        "scale = 6\n",
    )
    scheduler = Scheduler(project, store, OPTIONS)
    stop = asyncio.Event()
    with ProcessCounter(project.agents["burst"].dir) as counter:
        task = asyncio.create_task(_run_scheduler(scheduler, stop))
        try:
            await wait_for(lambda: scheduler.info is not None)
            assert [p.size for p in await store.pool_states()] == [0]  # starts at min
            # One long run first, then a burst of short ones.
            prompts = ["sleep=20;"] + ["sleep=0.5;"] * 11
            for prompt in prompts:
                await scheduler.submit(NewItem("burst", TriggerKind.MANUAL, prompt=prompt))
            await wait_for(lambda: _ended(store, len(prompts)), timeout=90)
            # After the last run ends, the pool goes back to min once 2 s have passed.
            await wait_for(lambda: _pool_size(store, "burst", 0), timeout=15)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    runs = await all_runs(store, "burst")
    assert len(runs) == len(prompts)
    assert all(r.state is RunState.SUCCEEDED for r in runs), [(r.id, r.error) for r in runs]
    assert counter.samples > 50
    assert counter.most == 4  # grew to max, never above it
    assert max_overlap(runs) <= 4
    log = list(reversed(await store.pool_decisions("burst", limit=1000)))
    assert all(0 <= d.desired <= 4 for d in log)
    changes = [(d.direction, d.size, d.desired) for d in log if d.direction != "hold"]
    grows = [c for c in changes if c[0] == "grow"]
    shrinks = [c for c in changes if c[0] == "shrink"]
    assert grows and grows[0][1] == 0 and max(c[2] for c in grows) == 4
    assert shrinks and shrinks[-1][2] == 0
    first_grow = next(d for d in log if d.direction == "grow")
    assert first_grow.inputs["queued"] > 0 and first_grow.inputs["policy"] == "reactive"
    assert "utilisation" in first_grow.reason
    # The long run was busy when the pool shrank below 4, and it succeeded.
    long_run = next(r for r in runs if r.prompt == "sleep=20;")
    assert long_run.ended_at is not None
    during = [d for d in log if d.direction == "shrink" and d.decided_at < long_run.ended_at]
    assert during, changes
    assert during[0].inputs["busy"] >= 1 and during[0].desired >= 1
    assert long_run.state is RunState.SUCCEEDED


async def test_the_project_cap_bounds_the_pool(tmp_path: Path, store: Store) -> None:
    project = pooled_project(
        tmp_path / "p", "[scale]\nmin = 0\nmax = 4\nstabilization = 2\n", "scale = 2\n"
    )
    scheduler = Scheduler(project, store, OPTIONS)
    stop = asyncio.Event()
    with ProcessCounter(project.agents["burst"].dir) as counter:
        task = asyncio.create_task(_run_scheduler(scheduler, stop))
        try:
            await wait_for(lambda: scheduler.info is not None)
            for _ in range(6):
                await scheduler.submit(NewItem("burst", TriggerKind.MANUAL, prompt="sleep=0.5;"))
            await wait_for(lambda: _ended(store, 6), timeout=60)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    assert counter.most == 2
    log = await store.pool_decisions("burst", limit=1000)
    assert max(d.desired for d in log) == 2, [(d.size, d.desired, d.reason, d.inputs) for d in log]
    assert all(d.inputs["cap"] == 2 and d.inputs["ceiling"] <= 2 for d in log)


async def test_a_fixed_scale_is_not_pooled_and_behaves_as_before(
    tmp_path: Path, store: Store
) -> None:
    project = write_project(tmp_path / "p", {"two": {"scale": 2, "command": "sleep 0.3"}})
    scheduler = Scheduler(project, store, OPTIONS)
    stop = asyncio.Event()
    with ProcessCounter(project.agents["two"].dir) as counter:
        task = asyncio.create_task(_run_scheduler(scheduler, stop))
        try:
            await wait_for(lambda: scheduler.info is not None)
            for _ in range(6):
                await scheduler.submit(NewItem("two", TriggerKind.MANUAL))
            await wait_for(lambda: _ended(store, 6), timeout=60)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    assert await store.pool_states() == []
    assert await store.pool_decisions() == []
    assert counter.most == 2
    runs = await all_runs(store, "two")
    assert max_overlap(runs) == 2 and all(r.state is RunState.SUCCEEDED for r in runs)


async def test_two_scheduler_processes_never_exceed_the_stored_pool_size(
    tmp_path: Path, store_url: str
) -> None:
    """Two `corral start` on one store: the size a lease holder stored bounds both."""
    root = tmp_path / "p"
    project = pooled_project(root, "[scale]\nmin = 0\nmax = 6\n")
    async with await open_store(store_url) as store:
        from corral.scheduler.service import sync_config

        await sync_config(store, project)
        # This test decides the pool (a long lease): the schedulers only claim.
        assert await store.take_pool_lease("burst", "the-test", lease_seconds=600)
        assert await _set(store, 2) == 2
        with (
            ProcessCounter(project.agents["burst"].dir) as counter,
            SchedulerProcess(root, store_url, tmp_path / "a.log") as a,
            SchedulerProcess(root, store_url, tmp_path / "b.log") as b,
        ):
            await wait_for(lambda: _schedulers_running(store, 2), timeout=60)
            for _ in range(16):
                await store.enqueue(NewItem("burst", TriggerKind.MANUAL, prompt="sleep=1.5;"))
            await wait_for(lambda: _ended(store, 6), timeout=60)
            at_two = counter.most
            assert await _set(store, 3) == 3
            await wait_for(lambda: _ended(store, 16), timeout=60)
            assert a.stop() == 0 and b.stop() == 0
        runs = await all_runs(store, "burst")
        owners = {r.owner for r in runs}
        decisions = await store.pool_decisions("burst")
        pool = (await store.pool_states())[0]
    assert at_two == 2, (a.output(), b.output())
    assert counter.most == 3
    assert len(owners) == 2, owners  # both schedulers ran some
    assert all(r.state is RunState.SUCCEEDED for r in runs)
    # Only the lease holder decided: the schedulers recorded nothing, changed nothing.
    assert {d.scheduler_id for d in decisions} == {"the-test"}
    assert pool.size == 3 and pool.owner == "the-test"


async def _schedulers_running(store: Store, count: int) -> bool:
    return len([s for s in await store.list_schedulers() if s.state == "running"]) >= count


async def _set(store: Store, size: int) -> int | None:
    return await store.set_pool_size(
        "burst",
        "the-test",
        size=size,
        previous=0,
        policy="fixed",
        reason="set by the test",
        inputs={},
        record=True,
    )


async def _pool_size(store: Store, agent: str, size: int) -> bool:
    return any(p.agent == agent and p.size == size for p in await store.pool_states())


async def test_two_scheduler_processes_decide_a_pool_in_one_place(
    tmp_path: Path, store_url: str
) -> None:
    """Two `corral start` sizing one pool: one of them decides (the lease holder), both
    claim, and together they never run more than the pool's max."""
    root = tmp_path / "p"
    project = pooled_project(root, "[scale]\nmin = 0\nmax = 3\nstabilization = 1\n")
    async with await open_store(store_url) as store:
        with (
            ProcessCounter(project.agents["burst"].dir) as counter,
            SchedulerProcess(root, store_url, tmp_path / "a.log") as a,
            SchedulerProcess(root, store_url, tmp_path / "b.log") as b,
        ):
            await wait_for(lambda: _schedulers_running(store, 2), timeout=60)
            for _ in range(12):
                await store.enqueue(NewItem("burst", TriggerKind.MANUAL, prompt="sleep=1;"))
            await wait_for(lambda: _ended(store, 12), timeout=90)
            await wait_for(lambda: _pool_size(store, "burst", 0), timeout=30)
            decisions = await store.pool_decisions("burst", limit=1000)
            assert a.stop() == 0 and b.stop() == 0
        runs = await all_runs(store, "burst")
    assert counter.most <= 3, (a.output(), b.output())
    assert all(r.state is RunState.SUCCEEDED for r in runs)
    assert len({d.scheduler_id for d in decisions}) == 1, decisions  # one decider
    directions = {d.direction for d in decisions}
    assert {"grow", "shrink"} <= directions
    assert max(d.desired for d in decisions) <= 3


async def test_a_corral_start_sizes_a_predictive_pool_on_compressed_time(
    tmp_path: Path, store_url: str
) -> None:
    """One real `corral start` with a predictive pool whose windows are shrunk, as a
    trace replayed at compressed time needs (window, stabilization, startup): the pool
    grows under a burst, the decider leads by the configured startup, and the pool goes
    back to min once the stabilisation window has passed."""
    root = tmp_path / "p"
    project = pooled_project(
        root,
        '[scale]\npolicy = "predictive"\nmin = 1\nmax = 5\n'
        "window = 15\nstabilization = 2\nstartup = 1\n",
    )
    async with await open_store(store_url) as store:
        with (
            ProcessCounter(project.agents["burst"].dir) as counter,
            SchedulerProcess(root, store_url, tmp_path / "a.log") as a,
        ):
            await wait_for(lambda: _schedulers_running(store, 1), timeout=60)
            await wait_for(lambda: _pool_size(store, "burst", 1), timeout=30)
            for _ in range(10):
                await store.enqueue(NewItem("burst", TriggerKind.MANUAL, prompt="sleep=1;"))
            await wait_for(lambda: _ended(store, 10), timeout=90)
            await wait_for(lambda: _pool_size(store, "burst", 1), timeout=30)
            decisions = list(reversed(await store.pool_decisions("burst", limit=1000)))
            assert a.stop() == 0
        runs = await all_runs(store, "burst")
    assert all(r.state is RunState.SUCCEEDED for r in runs), a.output()
    assert 1 < counter.most <= 5
    grows = [d for d in decisions if d.direction == "grow"]
    shrinks = [d for d in decisions if d.direction == "shrink"]
    assert grows and max(d.desired for d in grows) > 1, decisions
    assert shrinks and shrinks[-1].desired == 1
    assert all(d.inputs["start_seconds"] == 1.0 for d in grows)
    assert all(d.policy == "predictive" and 1 <= d.desired <= 5 for d in decisions)
    # Shrinking waited for the stabilisation window after the last run ended.
    last_end = max(r.ended_at for r in runs if r.ended_at is not None)
    assert shrinks[-1].decided_at >= last_end


async def _join(store: Store, name: str, labels: tuple[str, ...], slots: int) -> Runner:
    await store.create_fleet_token(
        hash_token(f"tok-{name}"), ttl=timedelta(days=1), labels=labels, actor="test"
    )
    runner = await store.redeem_fleet_token(
        hash_token(f"tok-{name}"),
        hash_token(f"cred-{name}"),
        NewRunner(name=name, hostname=f"{name}.example", labels=labels, slots=slots),
    )
    assert isinstance(runner, Runner), runner
    return runner


async def test_the_runners_free_slots_bound_a_pool_that_runs_on_them(
    tmp_path: Path, store: Store
) -> None:
    """An agent that runs on the fleet's runners (``runsOn``) gets no more pool than the
    slots its runners have free for it: runners with its labels, active and online, less
    the other agents' runs on them, its own runs counted wherever they are. The bound is
    an input of every decision."""
    project = write_project(
        tmp_path / "p",
        {
            "gpu": {"command": "true", "runsOn": ["gpu"]},
            "other": {"command": "true", "runsOn": ["gpu"], "scale": 2},
        },
        "[fleet]\nheartbeatSeconds = 5\nofflineAfterSeconds = 3600\n",
        tables={"gpu": '[scale]\nmin = 0\nmax = 6\npolicy = "reactive"\nstabilization = 0\n'},
    )
    await sync_config(store, project)
    big = await _join(store, "big", ("gpu", "linux"), 3)
    await _join(store, "cpu", ("linux",), 4)  # not the agent's labels: no slot for it
    await store.enqueue(NewItem("other", TriggerKind.MANUAL))
    assert await store.claim(big.id, lease_seconds=60, limit=1, agents=["other"], runner=True)
    for _ in range(8):
        await store.enqueue(NewItem("gpu", TriggerKind.MANUAL))
    sizer = PoolSizer(store, lambda: "s1", lambda: project)
    for _ in range(3):
        await sizer.tick_all()
    assert await _pool_size(store, "gpu", 2)  # 3 slots, 1 of them busy with "other"
    (decision,) = await store.pool_decisions("gpu", limit=1)
    assert decision.inputs["slots"] == 2 and decision.inputs["ceiling"] == 2
    assert decision.inputs["runners"] == 1 and decision.inputs["runner_slots"] == 3
    assert "fleet: 2 runner slot(s)" in decision.reason
    # one run of its own on the runner: still its slot
    (mine,) = await store.claim(big.id, lease_seconds=60, limit=1, agents=["gpu"], runner=True)
    await sizer.tick_all()
    assert await _pool_size(store, "gpu", 2)
    # the runner drained: no slot for new runs, but its own live run is still an instance
    await store.set_runner_state(big.id, RunnerState.DRAINING, actor="test")
    await sizer.tick_all()
    assert await _pool_size(store, "gpu", 1)
    last = (await store.pool_decisions("gpu", limit=1))[0]
    assert (last.inputs["slots"], last.inputs["runners"], last.direction) == (1, 0, "shrink")
    assert mine.run.runner_id == big.id
    # a second runner with its labels joins: its slots are the pool's room
    await _join(store, "more", ("gpu",), 4)
    await sizer.tick_all()
    assert await _pool_size(store, "gpu", 5)
    assert (await store.pool_decisions("gpu", limit=1))[0].inputs["slots"] == 5
