"""The lease of runs on runners as a setting: ``CORRAL_FLEET_LEASE_SECONDS`` read by the
control plane, and a runner adopting the lease a control plane announces (self-fencing
at 7/12 of it, the default 7 s of 12 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.engine import fleet_runs
from corral.runner.agent import FENCE_AFTER, Runner, RunnerSettings


def test_the_lease_setting_and_its_bounds() -> None:
    assert fleet_runs.lease_seconds({}) == 12.0
    assert fleet_runs.lease_seconds({"CORRAL_FLEET_LEASE_SECONDS": "6"}) == 6.0
    assert fleet_runs.lease_seconds({"CORRAL_FLEET_LEASE_SECONDS": " 4.5 "}) == 4.5
    for wrong in ("", "2.9", "601", "soon", "nan", "inf", "-6"):
        assert fleet_runs.lease_seconds({"CORRAL_FLEET_LEASE_SECONDS": wrong}) == 12.0, wrong
    assert FENCE_AFTER == pytest.approx(7.0)


async def test_a_runner_fences_at_seven_twelfths_of_the_announced_lease(tmp_path: Path) -> None:
    settings = RunnerSettings(
        urls=["http://127.0.0.1:9"],
        runner_id="rnr-test",
        credential="crr_x",
        name="t",
        work_dir=tmp_path / "work",
    )
    runner = Runner(settings)
    try:
        assert (runner.lease, runner.fence_after) == (12.0, 7.0)
        runner.adopt_lease(6)
        assert (runner.lease, runner.fence_after) == (6.0, 3.5)
        runner.adopt_lease(24.0)
        assert (runner.lease, runner.fence_after) == (24.0, 14.0)
        for ignored in (None, "6", True, 1.0, 10_000, float("nan")):
            runner.adopt_lease(ignored)
            assert (runner.lease, runner.fence_after) == (24.0, 14.0), ignored
    finally:
        await runner.client.close()
