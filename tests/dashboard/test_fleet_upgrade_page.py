"""The dashboard's rollouts page shows the latest corral upgrade of the runners with its
figures per corral version (the ones `corral fleet upgrade status` gives)."""

from __future__ import annotations

from datetime import timedelta

import httpx

from corral.engine import fleet_upgrade
from corral.engine.token import hash_token
from corral.store import NewRunner, Runner
from tests.dashboard.support import DashFleet


async def test_the_rollouts_page_shows_the_corral_upgrade_per_version(
    fleet: DashFleet, signed_in: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    http, _ = signed_in
    store = fleet.store
    before = await http.get("/dashboard/rollouts")
    assert before.status_code == 200 and 'id="fleet-upgrade"' not in before.text
    for name, version in (("a", "0.1.0"), ("b", "0.1.0"), ("c", "0.1.1")):
        await store.create_fleet_token(hash_token(f"t-{name}"), ttl=timedelta(days=1), actor="t")
        joined = await store.redeem_fleet_token(
            hash_token(f"t-{name}"),
            hash_token(f"c-{name}"),
            NewRunner(name=name, hostname=name, version=version),
            max_runners=None,
        )
        assert isinstance(joined, Runner)
    made = await fleet_upgrade.start_rollout(
        store, target="0.1.1", index="https://example.invalid/simple", actor="t"
    )
    page = await http.get("/dashboard/rollouts")
    assert page.status_code == 200
    assert f"Corral upgrade {made.id}: running" in page.text
    assert "to corral 0.1.1 (stable), 1 of 3 runner(s) there" in page.text
    rows = page.text.split('<tr class="corral-version">')[1:]
    assert len(rows) == 2
    assert "<td>0.1.0</td>" in rows[0] and "<td>2</td>" in rows[0] and "100%" in rows[0]
    assert "<td>0.1.1 (target)</td>" in rows[1] and "<td>1</td>" in rows[1]
