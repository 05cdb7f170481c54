"""`corral pools` and `corral pools log [AGENT]`: the real command line on a real store."""

from __future__ import annotations

import json
from pathlib import Path

from corral.scheduler.service import sync_config
from corral.store import Store
from tests.cli.conftest import Corral
from tests.scheduler.helpers import write_project


async def test_pools_and_their_log(
    corral: Corral, tmp_path: Path, store: Store, store_url: str
) -> None:
    # An agent named `log` must not be mistaken for the subcommand.
    tables = {name: "[scale]\nmin = 1\nmax = 3\n" for name in ("burst", "log")}
    project = write_project(
        tmp_path / "p",
        {"burst": {"command": "true"}, "log": {"command": "true"}, "plain": {"command": "true"}},
        tables=tables,
    )
    await sync_config(store, project)
    env = {"CORRAL_STATE_URL": store_url}

    def run(*args: str) -> str:
        result = corral(*args, cwd=project.root, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "no decisions recorded" in run("pools", "log")
    for agent in ("burst", "log"):
        assert await store.take_pool_lease(agent, "sched-1", lease_seconds=60) is not None
    for agent, size, previous in (("burst", 3, 1), ("burst", 2, 3), ("log", 2, 1)):
        await store.set_pool_size(
            agent,
            "sched-1",
            size=size,
            previous=previous,
            policy="reactive",
            reason=f"utilisation says {size}",
            inputs={"queued": 7, "busy": 1, "recommended": size},
            record=True,
        )

    pools = json.loads(run("pools", "--json"))
    assert [(p["agent"], p["desired"], p["max"], p["decidedBy"]) for p in pools] == [
        ("burst", 2, 3, "sched-1"),
        ("log", 2, 3, "sched-1"),
    ]
    table = run("pools")
    assert "burst" in table and "sched-1" in table and "plain" not in table

    everything = json.loads(run("pools", "log", "--json"))
    assert [(d["agent"], d["direction"], d["from"], d["to"]) for d in everything] == [
        ("log", "grow", 1, 2),
        ("burst", "shrink", 3, 2),
        ("burst", "grow", 1, 3),
    ]
    assert everything[1]["inputs"] == {"queued": 7, "busy": 1, "recommended": 2}
    of_log = json.loads(run("pools", "log", "log", "--json"))
    assert [d["agent"] for d in of_log] == ["log"]
    shown = run("pools", "log", "burst")
    assert "shrink 3->2" in shown and "utilisation says 2" in shown and '"queued":7' in shown

    unknown = corral("pools", "log", "nosuch", cwd=project.root, env=env)
    assert unknown.returncode != 0 and "nosuch" in unknown.stderr


async def test_scale_log_is_pools_log_and_scale_log_n_still_scales(
    corral: Corral, tmp_path: Path, store: Store, store_url: str
) -> None:
    """`corral scale log [AGENT]` lists the decisions (the fleet's under :fleet);
    `corral scale log 2` scales an agent named `log`, as it always did."""
    project = write_project(
        tmp_path / "p", {"burst": {"command": "true"}, "log": {"scale": 1, "command": "true"}}
    )
    await sync_config(store, project)
    env = {"CORRAL_STATE_URL": store_url}
    await store.record_fleet_decision(
        "sched-1", size=0, desired=2, policy="reactive", reason="queue of 3", inputs={"queued": 3}
    )
    listed = corral("scale", "log", "--json", cwd=project.root, env=env)
    assert listed.returncode == 0, listed.stderr
    (decision,) = json.loads(listed.stdout)
    assert (decision["agent"], decision["direction"], decision["to"]) == (":fleet", "grow", 2)
    fleet = corral("scale", "log", ":fleet", cwd=project.root, env=env)
    assert fleet.returncode == 0 and "queue of 3" in fleet.stdout, fleet.stderr
    none = corral("scale", "log", "burst", cwd=project.root, env=env)
    assert none.returncode == 0 and "no decisions recorded for burst" in none.stdout
    scaled = corral("scale", "log", "2", cwd=project.root, env=env)
    assert scaled.returncode == 0, scaled.stderr
    assert "agent log now runs at most 2 at once" in scaled.stdout
    assert "scale = 2" in (project.root / "agents" / "log" / "config.toml").read_text()
