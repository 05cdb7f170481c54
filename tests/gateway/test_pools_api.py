"""The autoscaler's pools on the control API (/control/pools, /control/pools/log) and
/metrics, over real HTTP with a real scheduler sizing a real pool."""

from __future__ import annotations

from pathlib import Path

import httpx

from corral.store import Store
from tests.gateway.fleet import TOKEN, running_fleet
from tests.gateway.test_metrics import scrape, value
from tests.scheduler.helpers import wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_pools_and_their_decisions_on_the_api_and_metrics(
    tmp_path: Path, store: Store
) -> None:
    agents: dict[str, dict[str, object]] = {
        "burst": {"command": "sleep 0.5"},
        "plain": {"scale": 2, "command": "true"},
    }
    tables = {"burst": "[scale]\nmin = 0\nmax = 3\nstabilization = 1\n"}
    async with running_fleet(tmp_path / "p", store, agents, tables=tables) as f:
        async with httpx.AsyncClient(base_url=f.url, timeout=30) as http:
            first = await scrape(http)
            assert value(first, "corral_pool_desired", agent="burst") == 0
            assert value(first, "corral_pool_desired", agent="plain") is None  # not pooled
            for _ in range(5):
                await f.trigger("burst")
            await f.finished("burst", 5)

            async def shrunk() -> bool:
                pools = (await http.get("/control/pools", headers=AUTH)).json()["pools"]
                return bool(pools) and pools[0]["desired"] == 0

            await wait_for(shrunk, timeout=20)
            answer = await http.get("/control/pools", headers=AUTH)
            assert answer.status_code == 200
            (pool,) = answer.json()["pools"]
            assert pool["agent"] == "burst" and pool["max"] == 3
            assert pool["decidedBy"] == f.scheduler.id

            log = await http.get("/control/pools/log?agent=burst&limit=500", headers=AUTH)
            decisions = log.json()["decisions"]
            directions = [d["direction"] for d in decisions]
            assert "grow" in directions and "shrink" in directions
            grow = next(d for d in reversed(decisions) if d["direction"] == "grow")
            assert grow["from"] == 0 and 1 <= grow["to"] <= 3
            assert grow["inputs"]["queued"] >= 1 and grow["scheduler"] == f.scheduler.id
            assert (await http.get("/control/pools/log", headers={})).status_code == 401

            after = await scrape(http)
            grows = value(after, "corral_pool_decisions_total", agent="burst", direction="grow")
            shrinks = value(after, "corral_pool_decisions_total", agent="burst", direction="shrink")
            assert grows == directions.count("grow")
            assert shrinks == directions.count("shrink")
            assert value(after, "corral_pool_desired", agent="burst") == 0
            assert value(after, "corral_pool_size", agent="burst") == 0
