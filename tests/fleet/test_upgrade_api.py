"""The fleet upgrade's open roads, on both stores: the wheel kept in the store (served by
any control plane process, the uploader's file gone), a rollback order naming where to
get the version back, `--channel` choosing the version on a local PEP 503 index (which
pip installs from), and the figures per corral version during a rollout."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from corral.engine import fleet_upgrade
from corral.engine.actions import ActionError
from corral.engine.token import hash_token
from corral.runner.upgrade import Versions
from corral.store import (
    AgentSpec,
    AnomalyKind,
    NewItem,
    NewRunner,
    Runner,
    RunnerState,
    RunState,
    Store,
    TriggerKind,
)
from tests.fleet.wheels import build_wheel


async def test_the_wheel_is_kept_in_the_store_and_served_from_it(
    store: Store, tmp_path: Path
) -> None:
    wheel = build_wheel("0.1.1", tmp_path / "wheels")
    data = wheel.read_bytes()
    made = await fleet_upgrade.start_rollout(store, target="0.1.1", wheel=wheel, actor="t")
    digest = hashlib.sha256(data).hexdigest()
    assert made.source == {"name": wheel.name, "sha256": digest, "stored": True}
    wheel.unlink()  # the uploader's file is gone: the store serves it
    assert await fleet_upgrade.wheel_data(store, made, "0.1.1") == (wheel.name, data)
    assert await fleet_upgrade.wheel_data(store, made, "0.1.2") is None
    # kept by content: the same bytes again store nothing; no project bundle shows it
    again = await fleet_upgrade.keep_wheel(store, data, wheel.name, actor="t", sha256=digest)
    assert again["stored"] is False and again["sha256"] == digest
    assert await store.list_bundles() == [] and await store.find_bundles("sha256:") == []
    # damaged on the way, no wheel, or no corral wheel's name: refused
    with pytest.raises(ActionError, match="the upload was damaged") as damaged:
        await fleet_upgrade.keep_wheel(store, data, wheel.name, actor="t", sha256="0" * 64)
    assert damaged.value.status == 400
    with pytest.raises(ActionError, match="these bytes are no wheel"):
        await fleet_upgrade.keep_wheel(store, b"hello", wheel.name, actor="t")
    with pytest.raises(ActionError, match="not the file name of a corral wheel"):
        await fleet_upgrade.keep_wheel(store, data, "../corral-0.1.1-x.whl", actor="t")
    # a rollout naming a wheel uploaded before: it must be kept, and of that version
    await fleet_upgrade.halt_rollout(store, actor="t")
    with pytest.raises(ActionError, match=r"is not a wheel of corral 0\.1\.2"):
        await fleet_upgrade.start_rollout(
            store, target="0.1.2", stored_wheel={"name": wheel.name, "sha256": digest}, actor="t"
        )
    with pytest.raises(ActionError, match="upload it first"):
        await fleet_upgrade.start_rollout(
            store, target="0.1.1", stored_wheel={"name": wheel.name, "sha256": "1" * 64}, actor="t"
        )
    named = await fleet_upgrade.start_rollout(
        store, target="0.1.1", stored_wheel={"name": wheel.name, "sha256": digest}, actor="t"
    )
    assert named.source["sha256"] == digest


async def test_a_rollback_order_names_where_to_get_the_version_back(
    store: Store, tmp_path: Path
) -> None:
    old = build_wheel("0.1.1", tmp_path / "wheels")
    first = await fleet_upgrade.start_rollout(store, target="0.1.1", wheel=old, actor="t")
    await fleet_upgrade.halt_rollout(store, actor="t")
    index = "https://example.invalid/simple"
    second = await fleet_upgrade.start_rollout(store, target="0.1.2", index=index, actor="t")
    assert second.source["back"] == {"0.1.1": first.source}
    runners = {"r1": {"state": "upgraded", "from": "0.1.1", "name": "one"}}
    moved = await store.update_fleet_rollout(
        second, state="rolled_back", detail={**second.detail, "runners": runners}
    )
    assert moved is not None
    runner = Runner(
        id="r1",
        name="one",
        hostname="one.example",
        labels=(),
        slots=1,
        version="0.1.2",
        state=RunnerState.ACTIVE,
        joined_at=store.now(),
        last_heartbeat_at=store.now(),
        offline_since=None,
        revoked_at=None,
        address=None,
        token_id=None,
    )
    order = fleet_upgrade._order(moved, runner)
    assert order == {
        "version": "0.1.1",
        "rollout": second.id,
        "rollback": True,
        "wheel": {"name": old.name, "sha256": first.source["sha256"]},
    }
    # and the control plane serves that wheel for it, while this rollout is the latest
    assert await fleet_upgrade.wheel_data(store, moved, "0.1.1") == (old.name, old.read_bytes())
    # a third rollout keeps both earlier sources
    third = await fleet_upgrade.start_rollout(store, target="0.1.3", index=index, actor="t")
    assert list(third.source["back"]) == ["0.1.1", "0.1.2"]


def _index(root: Path, files: dict[str, Path | None]) -> str:
    """A PEP 503 simple index in ``root``: ``corral/index.html`` linking ``files``."""
    folder = root / "corral"
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for name, wheel in files.items():
        data = wheel.read_bytes() if wheel else b""
        (folder / name).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        links.append(f'<a href="{name}#sha256={digest}">{name}</a><br/>')
    (folder / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")
    return root.as_uri()


async def test_the_channel_picks_the_version_on_the_index(store: Store, tmp_path: Path) -> None:
    index = _index(
        tmp_path / "simple",
        {
            "corral-0.1.1-py3-none-any.whl": None,
            "corral-0.1.10.tar.gz": None,
            "corral-0.1.9-py3-none-any.whl": None,
            "corral-0.2.0rc1-py3-none-any.whl": None,
            "corralx-9.0-py3-none-any.whl": None,
        },
    )
    assert await fleet_upgrade.index_versions(index) == ["0.1.1", "0.1.9", "0.1.10", "0.2.0rc1"]
    stable = await fleet_upgrade.start_rollout(store, target=None, index=index, actor="t")
    assert (stable.target, stable.channel) == ("0.1.10", "stable")
    await fleet_upgrade.halt_rollout(store, actor="t")
    beta = await fleet_upgrade.start_rollout(
        store, target=None, channel="beta", index=index, actor="t"
    )
    assert (beta.target, beta.channel) == ("0.2.0rc1", "beta")
    await fleet_upgrade.halt_rollout(store, actor="t")
    # --to a pre-release: the beta channel unless said otherwise; stable refuses it
    with pytest.raises(ActionError, match="is a pre-release: the stable channel"):
        await fleet_upgrade.start_rollout(
            store, target="0.2.0rc1", channel="stable", index=index, actor="t"
        )
    named = await fleet_upgrade.start_rollout(store, target="0.2.0rc1", index=index, actor="t")
    assert named.channel == "beta"
    await fleet_upgrade.halt_rollout(store, actor="t")
    # nothing for the channel: a clear error, no rollout
    only_rc = _index(tmp_path / "rc", {"corral-0.3.0rc2-py3-none-any.whl": None})
    with pytest.raises(ActionError, match="no corral version for the stable channel") as none:
        await fleet_upgrade.start_rollout(store, target=None, index=only_rc, actor="t")
    assert "0.3.0rc2" in none.value.message and "--channel beta" in none.value.message
    with pytest.raises(ActionError, match="cannot read the index"):
        await fleet_upgrade.start_rollout(
            store, target=None, index=(tmp_path / "nowhere").as_uri(), actor="t"
        )
    for bad, said in (
        ("http://[", "is no URL"),
        ("file://corral", "names an absolute path"),
        ("ftp://example.invalid/simple", "give an http"),
    ):
        with pytest.raises(ActionError, match=said):
            await fleet_upgrade.start_rollout(store, target=None, index=bad, actor="t")
    with pytest.raises(ActionError, match="bad --channel 'nightly'"):
        await fleet_upgrade.start_rollout(
            store, target=None, channel="nightly", index=index, actor="t"
        )
    latest = await store.latest_fleet_rollout()
    assert latest is not None and latest.id == named.id


async def test_the_runner_installs_the_channels_pick_from_that_index(tmp_path: Path) -> None:
    wheel = build_wheel("0.1.4", tmp_path / "wheels")
    index = _index(tmp_path / "simple", {wheel.name: wheel})
    [version] = await fleet_upgrade.index_versions(index)
    python = Versions(tmp_path / "work").install(version, index=index)
    said = subprocess.run(
        [str(python), "-c", "import corral; print(corral.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert said.stdout.strip() == "0.1.4"


async def _join(store: Store, name: str, version: str) -> Runner:
    await store.create_fleet_token(hash_token(f"t-{name}"), ttl=timedelta(days=1), actor="t")
    new = NewRunner(name=name, hostname=f"{name}.example", version=version)
    joined = await store.redeem_fleet_token(
        hash_token(f"t-{name}"), hash_token(f"c-{name}"), new, max_runners=None
    )
    assert isinstance(joined, Runner)
    return joined


async def test_the_figures_per_version(store: Store) -> None:
    start = store.now()
    old_a = await _join(store, "old-a", "0.1.0")
    old_b = await _join(store, "old-b", "0.1.0")
    new = await _join(store, "new", "0.1.1")
    await store.sync_project(
        [AgentSpec("work", 10, 100)], scale_cap=None, max_attempts=1, max_reruns=0
    )
    for runner, states in (
        (old_a, [RunState.SUCCEEDED, RunState.SUCCEEDED]),
        (new, [RunState.SUCCEEDED, RunState.FAILED, RunState.FAILED, RunState.SUCCEEDED]),
    ):
        for state in states:
            await store.enqueue(NewItem(agent="work", trigger=TriggerKind.MANUAL))
            [claim] = await store.claim(
                runner.id, lease_seconds=60, limit=1, agents=["work"], runner=True
            )
            await store.finalize(claim.run.id, fence=claim.run.fence, state=state, exit_code=0)
    await store.record_anomaly(AnomalyKind.RUNNER_OFFLINE, new.id, {"lastSeen": "x"})
    # five minutes on: old-a and new heartbeat again, old-b does not
    store.clock = lambda: start + timedelta(minutes=5)
    await store.runner_heartbeat(old_a.id, version="0.1.0")
    await store.runner_heartbeat(new.id, version="0.1.1")
    figures = await fleet_upgrade.version_figures(store)
    assert figures == [
        {
            "version": "0.1.0",
            "runners": 2,
            "online": 1,
            "onlineRatio": 0.5,
            "runsPerHour": 2.0,
            "failureRate": 0.0,
            "openAnomalies": 0,
        },
        {
            "version": "0.1.1",
            "runners": 1,
            "online": 1,
            "onlineRatio": 1.0,
            "runsPerHour": 4.0,
            "failureRate": 0.5,
            "openAnomalies": 1,
        },
    ]
    del old_b
    # and the status of a rollout shows them
    made = await fleet_upgrade.start_rollout(
        store, target="0.1.1", index="https://example.invalid/simple", actor="t"
    )
    answer = await fleet_upgrade.rollout_answer(store, made)
    assert answer["versions"] == figures and answer["fleet"]["atTarget"] == 1
