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
