"""A prompt rollout on PostgreSQL whose runs execute on a real runner process: the
control plane hands the canary's share of the runs to the runner with the candidate's
bundle hash, the runner fetches and runs it, and the evaluator rolls the bad canary back;
/control/rollouts compares the versions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.bundles import pack
from corral.store import Run, open_store
from tests.fleet.fleetkit import (
    Plane,
    RunnerProcess,
    control_plane,
    join_runner,
    start_runner,
    wait_for,
)
from tests.rollouts.test_rollout_process import FLAKY
from tests.scheduler.helpers import write_project

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PROJECT = "[fleet]\nheartbeatSeconds = 1\n"


def version(root: Path, fail_rate: float, words: str) -> None:
    write_project(
        root,
        {"dev": {"command": ["/bin/sh", "-c", FLAKY], "runsOn": ["linux"], "scale": 4}},
        PROJECT,
    )
    folder = root / "agents" / "dev"
    (folder / "fail_rate").write_text(f"{fail_rate}\n")
    (folder / "SKILL.md").write_text(f"---\nname: dev\n---\n{words}\n")


def _runs(url: str) -> list[Run]:
    async def read() -> list[Run]:
        async with await open_store(url) as store:
            return await store.list_runs(limit=1000)

    return asyncio.run(read())


@pytest.fixture
def plane(tmp_path: Path, store_url: str) -> Iterator[tuple[Plane, RunnerProcess]]:
    root = tmp_path / "project"
    version(root, 0.0, "one")
    with control_plane(root, store_url, tmp_path / "start.log") as made:
        made.push()
        runner = start_runner(join_runner(made, tmp_path, "r1", ["linux"], 4))
        try:
            yield made, runner
        finally:
            runner.stop()


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_a_bad_canary_on_a_runner_is_rolled_back(
    plane: tuple[Plane, RunnerProcess], store_url: str
) -> None:
    made, runner = plane
    baseline = pack(made.root).hash
    version(made.root, 0.9, "two, worse")
    packed = pack(made.root)
    started = httpx.post(
        f"{made.url}/control/bundles",
        params={"canary": "50%", "min_runs": 6},
        content=packed.data,
        headers={
            "Authorization": f"Bearer {made.operator}",
            "Content-Type": "application/x-tar",
        },
        timeout=60,
    )
    assert started.status_code == 200, started.text
    rollout = started.json()["rollout"]
    assert rollout["candidate"] == packed.hash and rollout["baseline"] == baseline
    wait_for(lambda: "rollout 1: 50% of the runs of dev" in made.process.output(), 30)

    def ended() -> bool:
        answer = made.control("GET", "/rollouts").json()
        state = answer["rollouts"][0]["rollout"]["state"]
        if state != "running":
            return True
        live = sum(not r.state.is_terminal for r in _runs(store_url))
        for _ in range(max(0, 8 - live)):
            made.trigger("dev")
        return False

    wait_for(ended, 120, interval=0.5)
    answer = made.control("GET", "/rollouts", params={"agent": "dev"}).json()
    shown = answer["rollouts"][0]
    assert shown["rollout"]["state"] == "rolled_back", shown
    assert "Fisher exact" in shown["rollout"]["reason"]
    assert shown["versions"]["canary"]["runs"] >= 6
    assert shown["versions"]["baseline"]["successRate"] == 1.0
    runs = _runs(store_url)
    canary = [r for r in runs if r.bundle == packed.hash]
    assert canary and all(r.runner_id == runner.runner_id for r in canary)
    assert {r.bundle for r in runs} == {baseline, packed.hash}
    assert sum(r.state.value == "failed" for r in canary) >= 3
    # the runner fetched the candidate's agent bundle and ran its files
    logs = made.root / ".corral" / "logs"
    ended_canary = [r for r in canary if r.state.is_terminal]
    assert any("0.9" in (logs / f"{r.id}.log").read_text() for r in ended_canary)
    refused = made.control("POST", "/rollouts/1/promote")
    assert refused.status_code == 409 and "ended already" in refused.text
