"""A run's output on a runner reaches the control plane's run log whole, however soon
the run ends after it: a pre hook's output when the hook fails the run at once, and the
last line of a run that ends right after printing it (a real control plane and a real
runner process, on both stores)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.store import Run, RunState, open_store
from tests.fleet.fleetkit import control_plane, join_runner, start_runner, wait_for
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow


def _runs(store_url: str) -> list[Run]:
    async def read() -> list[Run]:
        async with await open_store(store_url) as store:
            return await store.list_runs(limit=50)

    return asyncio.run(read())


def test_hook_output_and_the_last_lines_reach_the_control_plane(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "project"
    write_project(
        root,
        {
            "hooked": {
                "command": ["/bin/sh", "-c", "echo never-runs"],
                "runsOn": [],
            },
            "brief": {
                "command": ["/bin/sh", "-c", 'echo "last words of $CORRAL_RUN_ID"'],
                "runsOn": [],
            },
        },
        tables={"hooked": """[hooks]\npre = ['echo "pre-hook says $CORRAL_RUN_ID"; exit 3']\n"""},
    )
    with control_plane(root, store_url, tmp_path / "start.log") as plane:
        plane.push()
        runner = start_runner(join_runner(plane, tmp_path, "r1", [], 2))
        try:
            plane.trigger("hooked")
            plane.trigger("brief")

            def ended() -> list[Run]:
                runs = _runs(store_url)
                done = len(runs) == 2 and all(r.state.is_terminal for r in runs)
                return runs if done else []

            try:
                runs = wait_for(ended, 90)
            except AssertionError:
                raise AssertionError(
                    plane.process.output()[-3000:] + runner.output()[-3000:]
                ) from None
        finally:
            runner.stop()
    by_agent = {r.agent: r for r in runs}
    hooked, brief = by_agent["hooked"], by_agent["brief"]
    assert hooked.state is RunState.FAILED and hooked.runner_id == runner.runner_id
    assert brief.state is RunState.SUCCEEDED and brief.runner_id == runner.runner_id
    logs = root / ".corral" / "logs"
    assert f"pre-hook says {hooked.id}" in (logs / f"{hooked.id}.log").read_text()
    assert f"last words of {brief.id}" in (logs / f"{brief.id}.log").read_text()
