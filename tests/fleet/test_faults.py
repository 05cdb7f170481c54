"""The fleet under faults, end to end, on both stores: one control plane and four runners,
three of them in simulated hosts of their own (network namespaces). Runs spread by
labels and slots; then, at once, one runner is killed (-9), one is cut off (its link
goes down) and one is frozen (SIGSTOP on its whole host). Each lost run is recovered and
run again on the fourth runner within 15 s; live run processes, sampled from /proc all
along, never break an agent's scale, the project's cap, or one process per item; every
item runs once more for each fault and no more. The figures are printed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.engine.fleet_runs import FENCE_SHARE
from corral.store import Run, RunState, open_store
from tests.fleet.fleetkit import (
    TEST_LEASE,
    RunnerProcess,
    Sampler,
    control_plane,
    join_runner,
    run_processes,
    start_runner,
    wait_for,
)
from tests.hosts import hosts
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

EDGE_SCALE = 4
CAP = 5
#: The whole fault round (kill, cut, freeze to each run started again) must be this quick.
RECOVERY_TARGET = 15.0


def _runs(store_url: str) -> list[Run]:
    async def read() -> list[Run]:
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=200)

    return asyncio.run(read())


def _project(root: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sleep").write_text("60")
    started = f'echo "$CORRAL_ITEM_ID $CORRAL_RUN_ID" >> "{out}/starts"'
    write_project(
        root,
        {
            "edge": {
                # how long it runs is read when it starts: the test shortens the re-runs
                "command": [
                    "/bin/sh",
                    "-c",
                    f'{started}; sleep "$(cat {out}/sleep)"; echo done # fmark-edge',
                ],
                "runsOn": ["edge"],
                "scale": EDGE_SCALE,
            },
            "gpu": {
                "command": ["/bin/sh", "-c", f"{started}; sleep 0.5; echo done # fmark-gpu"],
                "runsOn": ["gpu"],
            },
        },
        f"scale = {CAP}\n[fleet]\nheartbeatSeconds = 1\nofflineAfterSeconds = 4\n",
    )


def test_kill_cut_and_freeze_of_three_runners(tmp_path: Path, store_url: str) -> None:
    root, out = tmp_path / "project", tmp_path / "out"
    _project(root, out)
    runners: dict[str, RunnerProcess] = {}
    began = time.monotonic()
    with (
        hosts("r1", "r2", "r3") as made,
        control_plane(root, store_url, tmp_path / "start.log", "--expose") as plane,
        Sampler(
            {"edge": "fmark-edge", "gpu": "fmark-gpu"}, {"edge": EDGE_SCALE, "gpu": 1}, CAP
        ) as sampler,
    ):
        plane.push()
        try:
            for name in ("r1", "r2", "r3"):
                host = made[name]
                url = f"http://{host.peer}:{plane.port}"
                runners[name] = join_runner(plane, tmp_path, name, ["edge"], 1, host=host, url=url)
            r4 = join_runner(plane, tmp_path, "r4", ["edge", "gpu"], 4)
            config = json.loads(r4.config.read_text())
            r4.config.write_text(json.dumps(config | {"drainSeconds": 1}))
            runners["r4"] = r4
            for name in ("r1", "r2", "r3"):
                start_runner(runners[name])
            for _ in range(4):
                plane.trigger("edge")
            plane.trigger("gpu")

            # one slot each: three edge runs start, one per runner in a host; the fourth
            # edge run waits for a slot, the gpu run for a runner with the label
            wait_for(lambda: len(run_processes("fmark-edge")) == 3, 60)
            time.sleep(1.5)
            assert len(run_processes("fmark-edge")) == 3
            runs = _runs(store_url)
            assert len([r for r in runs if r.agent == "edge"]) == 3, runs
            assert not [r for r in runs if r.agent == "gpu"]
            start_runner(r4)
            wait_for(lambda: len(run_processes("fmark-edge")) == 4, 30)
            wait_for(
                lambda: [r for r in _runs(store_url) if r.agent == "gpu" and r.state.is_terminal],
                30,
            )
            by_runner = {runner.runner_id: name for name, runner in runners.items()}
            placed = {r.id: by_runner.get(r.runner_id or "") for r in _runs(store_url)}
            assert sorted(placed.values()) == ["r1", "r2", "r3", "r4", "r4"], placed
            first = {placed[r.id]: r for r in _runs(store_url) if r.agent == "edge"}

            # the faults, all at once; the runs started again from now on are short
            (out / "sleep").write_text("3")
            made["r2"].cut()
            made["r3"].freeze()
            runners["r1"].kill9()
            fault_wall, fault_at = datetime.now(UTC), time.monotonic()
            victims = {name: first[name] for name in ("r1", "r2", "r3")}
            items = {run.item_id: name for name, run in victims.items()}

            def gone(name: str) -> bool:
                return str(victims[name].item_id) not in run_processes("fmark-edge")

            # the killed runner's watchdog kills its run at once; the cut-off runner
            # fences itself off before its lease can lapse (7/12 of the lease)
            wait_for(lambda: gone("r1"), 5, interval=0.05)
            killed_gone = time.monotonic() - fault_at
            wait_for(lambda: gone("r2"), TEST_LEASE, interval=0.05)
            fenced_gone = time.monotonic() - fault_at
            assert run_processes("fmark-edge").get(str(victims["r3"].item_id))  # frozen

            def again() -> dict[int, Run]:
                reruns = {
                    r.item_id: r
                    for r in _runs(store_url)
                    if r.item_id in items and r.id not in {v.id for v in victims.values()}
                }
                return reruns if len(reruns) == 3 else {}

            reruns = wait_for(again, 40, interval=0.1)
            recovery = {
                items[item]: (run.created_at - fault_wall).total_seconds()
                for item, run in reruns.items()
            }
            assert all(run.runner_id == r4.runner_id for run in reruns.values()), reruns
            assert max(recovery.values()) <= RECOVERY_TARGET, recovery

            def finished() -> bool:
                now = {r.id: r for r in _runs(store_url)}
                return all(now[run.id].state.is_terminal for run in reruns.values())

            wait_for(finished, 30)
            # thawed once its item ran again elsewhere: it kills its stale run at once
            made["r3"].thaw()
            thawed = time.monotonic()
            wait_for(lambda: gone("r3"), 10, interval=0.05)
            thaw_gone = time.monotonic() - thawed
            made["r2"].mend()
            wait_for(lambda: "handed on" in runners["r3"].output(), 20)
            sampler.stop()
            now = {r.id: r for r in _runs(store_url)}
        finally:
            for runner in runners.values():
                if runner.proc is not None:
                    runner.stop()

    # each lost run is lost for good (the thawed runner's late report was refused), its
    # item ran again, once, and succeeded there
    for name, run in victims.items():
        assert now[run.id].state is RunState.LOST, (name, now[run.id])
    assert all(now[run.id].state is RunState.SUCCEEDED for run in reruns.values())
    starts = Counter(line.split()[0] for line in (out / "starts").read_text().splitlines())
    executions = sum(starts.values())
    assert {int(item) for item, n in starts.items() if n == 2} == set(items), starts
    assert all(n in (1, 2) for n in starts.values()) and len(starts) == 5, starts
    # the cut-off runner fenced itself off by the lease the control plane announced
    fenced = re.search(
        r"self-fenced: .* for ([0-9.]+) s \(lease ([0-9.]+) s\)", runners["r2"].output()
    )
    assert fenced is not None, runners["r2"].output()[-3000:]
    assert float(fenced.group(2)) == TEST_LEASE
    assert float(fenced.group(1)) < TEST_LEASE * FENCE_SHARE + 1, fenced.group(0)
    assert sampler.violations == [], sampler.violations[:20]
    assert sampler.samples > 100 and sampler.most["edge"] == EDGE_SCALE
    print(
        f"\nfleet faults (lease {TEST_LEASE:g} s, heartbeat 1 s): recovery (fault -> run "
        f"claimed again elsewhere) kill -9 {recovery['r1']:.2f} s, cut {recovery['r2']:.2f} s, "
        f"freeze {recovery['r3']:.2f} s; run processes gone after: kill -9 {killed_gone:.2f} s, "
        f"cut (self-fenced) {fenced_gone:.2f} s, thaw {thaw_gone:.2f} s; "
        f"executions {executions} for {len(starts)} items ({executions - len(starts)} "
        f"re-executions); {sampler.samples} samples, {sampler.stopped_seen} stopped "
        f"process sightings, most live edge {sampler.most['edge']}, "
        f"violations {len(sampler.violations)}; whole test {time.monotonic() - began:.1f} s"
    )
