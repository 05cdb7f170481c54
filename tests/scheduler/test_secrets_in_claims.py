"""A scheduler's runs get their secrets from the claim: made ahead by the ``AgentLink``,
their hashes stored with the runs by ``Store.claim``, taken once by each run's start."""

from __future__ import annotations

from corral.scheduler.agentlink import AgentLink, hash_secret
from corral.store import AgentSpec, NewItem, Store, TriggerKind


async def _queue(store: Store, n: int) -> None:
    await store.sync_project([AgentSpec("a", 8, 100)], scale_cap=None, max_attempts=2, max_reruns=0)
    for _ in range(n):
        await store.enqueue(NewItem("a", TriggerKind.MANUAL, prompt="p"))


async def test_each_claimed_run_holds_the_secret_its_start_takes(store: Store) -> None:
    await _queue(store, 3)
    link = AgentLink(None)
    hashes = link.spare_hashes(8)
    assert len(set(hashes)) == 8 and link.spare_hashes(8) == hashes  # kept, not remade
    claims = await store.claim("s1", lease_seconds=60, limit=8, secret_hashes=hashes)
    link.claimed([(c.run.id, c.run.agent, c.run.trigger.value) for c in claims])
    for claim in claims:
        secret = link.take(claim.run.id)
        assert secret is not None and link.take(claim.run.id) is None  # given once
        stored = await store.run_for_secret(hash_secret(secret))
        assert stored is not None and stored.id == claim.run.id
        ref = link.lookup(secret)
        assert ref is not None and ref.run_id == claim.run.id
    # The 5 secrets no run took are offered again; the 3 used ones never are.
    again = link.spare_hashes(8)
    assert again[:5] == hashes[3:] and not set(again) & set(hashes[:3])
    link.revoke(claims[0].run.id)
    assert link.take(claims[0].run.id) is None


async def test_a_failed_claim_retires_every_spare_secret(store: Store) -> None:
    await _queue(store, 1)
    link = AgentLink(None)
    hashes = link.spare_hashes(4)
    link.claim_failed()  # it may have committed: none of them is offered again
    assert not set(link.spare_hashes(4)) & set(hashes)


async def test_a_run_claimed_without_secrets_has_none_to_take(store: Store) -> None:
    await _queue(store, 1)
    link = AgentLink(None)
    [claim] = await store.claim("s1", lease_seconds=60, limit=8)
    link.claimed([])
    assert link.take(claim.run.id) is None  # its start issues one (set_run_secret)
