"""The parts of a corral upgrade on their own: the versions directory (real venvs from
wheels made in the test, the atomic swap, keeping three), the wheel's checksum, the smoke
check (a real probe run), the guard (a real process that dies before it is healthy), the
rollout record on both stores, the comparison's rule and the version window."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral import __version__
from corral.engine import fleet_upgrade
from corral.engine.actions import ActionError
from corral.engine.fleet import FleetSettings
from corral.errors import UsageError
from corral.runner.upgrade import UpgradeError, Versions, check_wheel, smoke_check
from corral.store import Runner, RunnerState, Store
from tests.fleet.wheels import build_wheel


def test_versions_install_side_by_side_swap_atomically_and_keep_three(tmp_path: Path) -> None:
    versions = Versions(tmp_path / "work")
    versions.adopt_running()
    assert versions.current_version() == __version__
    assert versions.venv(__version__).resolve() == Path(sys.prefix).resolve()
    for minor in (1, 2, 3):
        version = f"0.1.{minor}"
        python = versions.install(version, wheel=build_wheel(version, tmp_path / "wheels"))
        said = subprocess.run(
            [str(python), "-c", "import corral; print(corral.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert said.stdout.strip() == version
        versions.point_at(version)
        assert os.readlink(versions.current) == version
        time.sleep(0.02)  # distinct mtimes: the oldest goes first
    assert set(versions.installed()) == {__version__, "0.1.1", "0.1.2", "0.1.3"}
    removed = versions.prune()
    assert removed == [__version__]
    assert set(versions.installed()) == {"0.1.1", "0.1.2", "0.1.3"}
    assert Path(sys.prefix).is_dir()  # the adopted install itself is untouched


def test_an_install_of_a_wheel_of_another_version_is_refused(tmp_path: Path) -> None:
    versions = Versions(tmp_path / "work")
    wheel = build_wheel("0.1.7", tmp_path / "wheels")
    with pytest.raises(UpgradeError, match=r"says it is version '0.1.7', not '0.1.8'"):
        versions.install("0.1.8", wheel=wheel)
    assert "0.1.8" not in versions.installed()


def test_a_wheel_whose_checksum_differs_is_refused() -> None:
    digest = hashlib.sha256(b"wheel").hexdigest()
    check_wheel(b"wheel", "sha256:" + digest)
    with pytest.raises(UpgradeError, match="changed or cut short"):
        check_wheel(b"wheel!", digest)


def test_the_smoke_check_is_a_real_probe_run(tmp_path: Path) -> None:
    output = asyncio.run(smoke_check(tmp_path))
    assert f"corral probe ok {__version__}" in output
    assert not list(tmp_path.iterdir())  # its project and store are removed


def test_the_guard_swaps_back_when_the_new_process_dies_unhealthy(tmp_path: Path) -> None:
    work = tmp_path / "work"
    versions = Versions(work)
    versions.adopt_running()
    (versions.root / "9.9.9" / "venv").mkdir(parents=True)
    doomed = subprocess.Popen(["/bin/sh", "-c", "sleep 0.5"])
    marker = tmp_path / "old-version-started"
    # what the guard starts in the dead process's place: the old interpreter and argv
    argv = ["-c", f"open({str(marker)!r}, 'w').write('started')"]
    versions.begin_trial(__version__, "9.9.9", argv, timeout=30)
    versions.point_at("9.9.9")
    guard = subprocess.Popen(
        [sys.executable, "-m", "corral.runner.upgrade", "guard", str(work), str(doomed.pid)]
    )
    doomed.wait(10)
    assert guard.wait(30) == 0
    assert marker.read_text() == "started"
    assert versions.current_version() == __version__
    assert versions.trial() is None
    failure = versions.take_failure()
    assert failure is not None and failure["stage"] == "start"
    assert "exited before it was healthy" in failure["error"]


async def test_a_rollout_is_compared_and_set_on_its_revision(store: Store) -> None:
    made = await store.create_fleet_rollout(
        target="0.1.1",
        channel="stable",
        canary=1,
        batch_share=0.25,
        watch_seconds=10,
        source={"index": "https://example.invalid/simple"},
        detail={"steps": []},
        actor="test",
    )
    assert (await store.latest_fleet_rollout()) == made
    moved = await store.update_fleet_rollout(made, state="halted", detail={"steps": [1]})
    assert moved is not None and moved.revision == made.revision + 1
    assert moved.state == "halted" and moved.detail == {"steps": [1]}
    # a second writer that read the old revision loses, and changes nothing
    assert await store.update_fleet_rollout(made, state="completed", detail={}) is None
    again = await store.get_fleet_rollout(made.id)
    assert again is not None and again.state == "halted"
    assert await store.runs_ended_by_runner(made.created_at - timedelta(days=1)) == []


async def test_a_second_rollout_is_refused_while_one_runs(store: Store, tmp_path: Path) -> None:
    wheel = build_wheel("0.1.1", tmp_path / "wheels")
    await fleet_upgrade.start_rollout(store, target="0.1.1", wheel=wheel, actor="test")
    with pytest.raises(ActionError, match="is running: wait for it") as refused:
        await fleet_upgrade.start_rollout(store, target="0.1.1", wheel=wheel, actor="test")
    assert refused.value.status == 409
    halted = await fleet_upgrade.halt_rollout(store, actor="test")
    assert halted.state == "halted"
    with pytest.raises(ActionError, match=r"not a wheel of corral 0\.1\.2"):
        await fleet_upgrade.start_rollout(store, target="0.1.2", wheel=wheel, actor="test")


def _runner(rid: str, seen: datetime) -> Runner:
    return Runner(
        id=rid,
        name=rid,
        hostname="h",
        labels=(),
        slots=1,
        version="0.1.1",
        state=RunnerState.ACTIVE,
        joined_at=seen,
        last_heartbeat_at=seen,
        offline_since=None,
        revoked_at=None,
        address=None,
        token_id=None,
    )


def test_the_comparison_rule() -> None:
    now = datetime.now(UTC)
    settings = FleetSettings(offline_after_seconds=15)
    fleet = [_runner("new", now), _runner("old", now)]

    def runs(rid: str, ok: int, bad: int, seconds: float = 1.0) -> list[dict[str, object]]:
        return [{"runner_id": rid, "state": "succeeded", "seconds": seconds}] * ok + [
            {"runner_id": rid, "state": "failed", "seconds": seconds}
        ] * bad

    fine = fleet_upgrade.compare(
        runs("new", 4, 1) + runs("old", 4, 1), {"new"}, fleet, now, settings
    )
    assert not fine["worse"]
    failing = fleet_upgrade.compare(
        runs("new", 1, 3) + runs("old", 5, 0), {"new"}, fleet, now, settings
    )
    assert failing["worse"] and "failure rate 75%" in failing["why"]
    few = fleet_upgrade.compare(
        runs("new", 0, 2) + runs("old", 5, 0), {"new"}, fleet, now, settings
    )
    assert not few["worse"]  # two runs are too few to judge
    slow = fleet_upgrade.compare(
        runs("new", 3, 0, 9.0) + runs("old", 3, 0, 2.0), {"new"}, fleet, now, settings
    )
    assert slow["worse"] and "median run 9 s" in slow["why"]
    silent = [_runner("new", now - timedelta(seconds=60)), _runner("old", now)]
    offline = fleet_upgrade.compare([], {"new"}, silent, now, settings)
    assert offline["worse"] and "offline: new" in offline["why"]


def test_the_version_window_and_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_FLEET_RUNNER_VERSIONS", "0.1.0,0.2.0")
    assert fleet_upgrade.window_refusal("0.1.5") is None
    refusal = fleet_upgrade.window_refusal("0.3.0")
    assert refusal is not None
    assert "corral 0.3.0 is outside" in refusal and "0.1.0 to 0.2.0" in refusal
    assert f"corral {__version__}" in refusal
    assert fleet_upgrade.parse_share("25%") == 0.25
    assert fleet_upgrade.parse_duration("1h") == 3600
    with pytest.raises(UsageError, match="bad --batch '0%'"):
        fleet_upgrade.parse_share("0%")
    with pytest.raises(UsageError, match="bad --watch 'soon'"):
        fleet_upgrade.parse_duration("soon")


@pytest.mark.parametrize("bad", ["../../x", "0.1.1/../..", "..", "", "v0.1.1", "0.1.1 "])
async def test_a_rollout_to_what_is_no_version_is_refused(store: Store, bad: str) -> None:
    with pytest.raises(ActionError, match="is not a corral version: give one as PEP 440") as no:
        await fleet_upgrade.start_rollout(
            store, target=bad, index="https://example.invalid/simple", actor="test"
        )
    assert no.value.status == 400
    assert await store.latest_fleet_rollout() is None


def test_the_runner_uses_no_version_that_is_not_one_as_a_path(tmp_path: Path) -> None:
    work = tmp_path / "deep" / "work"
    versions = Versions(work)
    outside = tmp_path / "deep" / "x"  # what versions/../../x would name
    outside.mkdir(parents=True)
    (outside / "keep").write_text("kept")
    for bad in ("../../deep/x", "../x", "..", "0.1.1/../../x"):
        with pytest.raises(UpgradeError, match="is not a corral version"):
            versions.install(bad, index="https://example.invalid/simple")
        with pytest.raises(UpgradeError, match="is not a corral version"):
            versions.mark_healthy(bad)
    assert (outside / "keep").read_text() == "kept"
    assert not (outside / "healthy").exists()


async def test_two_rollouts_started_at_once_are_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def nothing_yet() -> None:  # both read "none running" before either recorded
        return None

    index = "https://example.invalid/simple"
    first = await fleet_upgrade.start_rollout(store, target="0.1.1", index=index, actor="a")
    monkeypatch.setattr(store, "latest_fleet_rollout", nothing_yet)
    with pytest.raises(ActionError, match="another fleet rollout is running") as refused:
        await fleet_upgrade.start_rollout(store, target="0.1.2", index=index, actor="b")
    assert refused.value.status == 409
    monkeypatch.undo()
    assert await store.latest_fleet_rollout() == first
    # once it no longer runs, the next one is recorded
    await fleet_upgrade.halt_rollout(store, actor="a")
    second = await fleet_upgrade.start_rollout(store, target="0.1.2", index=index, actor="b")
    assert second.state == "running" and second.id != first.id


async def test_a_report_is_acknowledged_only_once_recorded(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = store.now()
    at = now.isoformat()
    step = {"kind": "canary", "runners": ["r1"], "startedAt": at, "upgradedAt": None}
    await store.create_fleet_rollout(
        target="0.1.2",
        channel="stable",
        canary=1,
        batch_share=0.25,
        watch_seconds=10,
        source={"index": "https://example.invalid/simple"},
        detail={
            "steps": [{**step, "verdict": None}],
            "runners": {"r1": {"state": "ordered", "from": "0.1.1", "name": "r1", "at": at}},
        },
        actor="test",
    )
    runner, settings = _runner("r1", now), FleetSettings()
    report = {"state": "failed", "version": "0.1.2", "stage": "install", "error": "boom"}
    real_update = store.update_fleet_rollout

    async def always_lost(*args: object, **kwargs: object) -> None:
        return None  # another process moved the rollout each time

    monkeypatch.setattr(store, "update_fleet_rollout", always_lost)
    _, recorded = await fleet_upgrade.on_heartbeat(store, runner, report, settings)
    assert recorded is False
    latest = await store.latest_fleet_rollout()
    assert latest is not None and latest.state == "running"
    monkeypatch.setattr(store, "update_fleet_rollout", real_update)
    _, recorded = await fleet_upgrade.on_heartbeat(store, runner, report, settings)
    assert recorded is True
    latest = await store.latest_fleet_rollout()
    assert latest is not None and latest.state == "failed"
    assert latest.detail["runners"]["r1"]["error"] == "boom"
    # told again once recorded: nothing changes, and it is acknowledged
    assert await fleet_upgrade.on_heartbeat(store, runner, report, settings) == (None, True)


async def test_the_runner_keeps_its_failure_report_until_it_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.runner.agent import Runner as RunnerAgent
    from corral.runner.agent import RunnerSettings

    agent = RunnerAgent(
        RunnerSettings(
            urls=["http://127.0.0.1:9"],
            runner_id="r1",
            credential="c",
            name="r1",
            work_dir=tmp_path / "work",
        )
    )
    agent.versions.record_failure("0.1.2", "install", "boom")
    failure = agent.versions.take_failure()
    assert failure is not None
    agent.upgrade_report = agent_report = {"state": "failed", **failure}
    answers = [
        {"state": "active", "upgradeRecorded": False},
        {"state": "active", "upgradeRecorded": True},
    ]
    sent: list[dict[str, object]] = []

    async def beat(body: dict[str, object]) -> dict[str, object]:
        sent.append(dict(body))
        return answers.pop(0)

    monkeypatch.setattr(agent, "_send_beat", beat)
    await agent._beat()  # the control plane lost its compare and set: not recorded
    assert agent.upgrade_report is not None and agent.versions.take_failure() is not None
    await agent._beat()
    assert agent.upgrade_report is None and agent.versions.take_failure() is None
    assert [b["upgrade"] for b in sent] == [agent_report, agent_report]


async def test_a_rollout_recorded_with_a_path_is_still_served_from_it(
    store: Store, tmp_path: Path
) -> None:
    """A rollout recorded before wheels were kept in the store names a path on the
    control plane's disk: served from there while the file is the one recorded."""
    wheel = build_wheel("0.1.1", tmp_path / "wheels")
    source = {
        "wheel": str(wheel),
        "name": wheel.name,
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
    }
    made = await store.create_fleet_rollout(
        target="0.1.1",
        channel="stable",
        canary=1,
        batch_share=0.25,
        watch_seconds=10,
        source=source,
        detail={"steps": []},
        actor="test",
    )
    served = await fleet_upgrade.wheel_data(store, made, "0.1.1")
    assert served == (wheel.name, wheel.read_bytes())
    assert await fleet_upgrade.wheel_data(store, made, "0.1.2") is None
    wheel.write_bytes(wheel.read_bytes() + b"changed")  # replaced on disk meanwhile
    assert await fleet_upgrade.wheel_data(store, made, "0.1.1") is None
    wheel.unlink()
    assert await fleet_upgrade.wheel_data(store, made, "0.1.1") is None
    assert "wheel" not in fleet_upgrade.rollout_json(made)["source"]  # no CP path shown


def test_a_version_key_takes_any_text_a_runner_reports() -> None:
    """A runner's heartbeat reports its version as free text: a superscript digit (a
    digit to str.isdigit, not to int) sorts as text instead of failing the heartbeat."""
    from corral.engine.fleet import version_key

    assert version_key("²") == ((1, "²"),)
    assert version_key("1.10.0") > version_key("1.9.0")
    assert version_key("v0.2") == ((0, 0), (0, 2))
