"""`corral scale AGENT N` (PUT /control/agents/AGENT/scale) on an agent whose pool is a
[scale] table is refused: writing `scale = N` beside the table would leave a config.toml
that no longer loads."""

from __future__ import annotations

from pathlib import Path

import httpx

from corral.project import load_project
from corral.store import Store
from tests.gateway.fleet import TOKEN, running_fleet

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_scaling_a_pooled_agent_by_number_is_refused(tmp_path: Path, store: Store) -> None:
    agents: dict[str, dict[str, object]] = {
        "pooled": {"command": "true"},
        "plain": {"scale": 2, "command": "true"},
    }
    tables = {"pooled": '[scale]\nmin = 1\nmax = 3\npolicy = "predictive"\n'}
    async with running_fleet(tmp_path / "p", store, agents, "", tables) as f:
        config = f.root / "agents" / "pooled" / "config.toml"
        before = config.read_text()
        async with httpx.AsyncClient(base_url=f.url, headers=AUTH, timeout=30) as http:
            refused = await http.put("/control/agents/pooled/scale", json={"scale": 5})
            assert refused.status_code == 409, refused.text
            assert "[scale] table" in refused.json()["error"]
            assert "change max there" in refused.json()["error"]
            plain = await http.put("/control/agents/plain/scale", json={"scale": 4})
            assert plain.status_code == 200, plain.text
        assert config.read_text() == before
        states = {a.agent: a.scale for a in await store.agent_states()}
        assert states == {"pooled": 3, "plain": 4}  # a pool runs up to its max for now
    assert load_project(f.root).agents["pooled"].effective_scale == 3
