"""The fleet's membership in the store, on both stores: single-use tokens (under
concurrency, on separate connections), expiry, revocation, the fleet cap, runner states,
offline detection once per outage, anomalies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from corral.engine.token import hash_token
from corral.errors import StoreError
from corral.store import (
    AnomalyKind,
    JoinRefusal,
    NewRunner,
    Runner,
    RunnerState,
    Store,
    open_store,
)

RawSql = Callable[[str, str], list[tuple[Any, ...]]]
DAY = timedelta(days=1)


def _runner(name: str = "box", **kw: Any) -> NewRunner:
    return NewRunner(name=name, hostname=f"{name}.example", version="1.0.0", **kw)


async def _join(store: Store, token: str, name: str = "box", **kw: Any) -> Runner | JoinRefusal:
    return await store.redeem_fleet_token(
        hash_token(token), hash_token(f"cred-{name}"), _runner(name), **kw
    )


async def test_a_token_is_kept_by_its_hash_and_redeemed_once(store: Store, raw_sql: RawSql) -> None:
    made = await store.create_fleet_token(
        hash_token("secret-1"), ttl=DAY, labels=("gpu",), actor="cli:me@here"
    )
    assert made.labels == ("gpu",) and made.status(store.now()) == "unused"
    rows = raw_sql(store.url, "SELECT token_hash FROM corral_fleet_tokens")
    assert rows == [(hash_token("secret-1"),)]
    joined = await _join(store, "secret-1", "a", max_runners=None)
    assert isinstance(joined, Runner)
    assert joined.labels == ("gpu",) and joined.state is RunnerState.ACTIVE
    assert joined.token_id == made.id
    [token] = await store.list_fleet_tokens()
    assert token.redeemed_by == joined.id and token.status(store.now()) == "redeemed"
    again = await _join(store, "secret-1", "b")
    assert isinstance(again, JoinRefusal) and again.reason == "reused"
    assert "already redeemed" in again.message and joined.id in again.message
    [anomaly] = await store.list_anomalies()
    assert anomaly.kind is AnomalyKind.TOKEN_REUSED and anomaly.subject == made.id
    assert anomaly.evidence is not None
    assert anomaly.evidence["name"] == "b" and anomaly.evidence["redeemedBy"] == joined.id
    assert [r.name for r in await store.list_runners()] == ["a"]


async def test_two_redemptions_at_once_on_separate_connections_one_wins(
    store: Store, store_url: str
) -> None:
    others = [await open_store(store_url) for _ in range(3)]
    try:
        for round_ in range(5):
            token = f"race-{round_}"
            await store.create_fleet_token(hash_token(token), ttl=DAY, actor="t")
            results = await asyncio.gather(
                *(_join(s, token, f"r{round_}-{i}") for i, s in enumerate(others))
            )
            won = [r for r in results if isinstance(r, Runner)]
            lost = [r for r in results if isinstance(r, JoinRefusal)]
            assert len(won) == 1, results
            assert [r.reason for r in lost] == ["reused", "reused"]
        assert len(await store.list_runners()) == 5
        open_ = await store.list_anomalies()
        assert len(open_) == 10 and {a.kind for a in open_} == {AnomalyKind.TOKEN_REUSED}
    finally:
        for other in others:
            await other.close()


async def test_unknown_expired_and_revoked_tokens_are_refused(store: Store) -> None:
    unknown = await _join(store, "never-made")
    assert isinstance(unknown, JoinRefusal) and unknown.reason == "unknown_token"
    await store.create_fleet_token(hash_token("short"), ttl=timedelta(seconds=30), actor="t")
    later = store.now() + timedelta(seconds=31)
    store.clock = lambda: later
    expired = await _join(store, "short")
    assert isinstance(expired, JoinRefusal) and expired.reason == "expired"
    assert "expired at" in expired.message
    made = await store.create_fleet_token(hash_token("gone"), ttl=DAY, actor="t")
    revoked = await store.revoke_fleet_token(made.id, actor="t")
    assert revoked is not None and revoked.revoked_at is not None
    refused = await _join(store, "gone")
    assert isinstance(refused, JoinRefusal) and refused.reason == "revoked"
    assert await store.list_runners() == []
    assert await store.list_anomalies() == []  # only a second redemption is an anomaly
    assert await store.revoke_fleet_token("tok-none", actor="t") is None


async def test_the_cap_refuses_a_join_and_leaves_its_token_unused(store: Store) -> None:
    for name in ("a", "b", "c"):
        await store.create_fleet_token(hash_token(name), ttl=DAY, actor="t")
    assert isinstance(await _join(store, "a", "a", max_runners=2), Runner)
    assert isinstance(await _join(store, "b", "b", max_runners=2), Runner)
    full = await _join(store, "c", "c", max_runners=2)
    assert isinstance(full, JoinRefusal) and full.reason == "fleet_full"
    assert "maxRunners is 2" in full.message
    tokens = {t.id: t for t in await store.list_fleet_tokens()}
    assert sum(t.redeemed_at is None for t in tokens.values()) == 1  # c's is not used
    # a revoked runner frees its place; the same token then works
    first = (await store.list_runners())[0]
    await store.set_runner_state(first.id, RunnerState.REVOKED, actor="t")
    assert isinstance(await _join(store, "c", "c", max_runners=2), Runner)


async def test_the_cap_holds_under_concurrent_joins(store: Store, store_url: str) -> None:
    others = [await open_store(store_url) for _ in range(4)]
    try:
        for i in range(4):
            await store.create_fleet_token(hash_token(f"t{i}"), ttl=DAY, actor="t")
        results = await asyncio.gather(
            *(_join(s, f"t{i}", f"n{i}", max_runners=2) for i, s in enumerate(others))
        )
        assert sum(isinstance(r, Runner) for r in results) == 2
        assert len(await store.list_runners()) == 2
    finally:
        for other in others:
            await other.close()


async def test_runner_states_credentials_and_heartbeats(store: Store) -> None:
    await store.create_fleet_token(hash_token("t"), ttl=DAY, actor="t")
    runner = await _join(store, "t", "a")
    assert isinstance(runner, Runner)
    found = await store.runner_by_credential(hash_token("cred-a"))
    assert found is not None and found.id == runner.id
    assert await store.runner_by_credential(hash_token("cred-b")) is None
    cordoned, changed = await store.set_runner_state(runner.id, RunnerState.CORDONED, actor="op")
    assert changed and cordoned is not None and cordoned.state is RunnerState.CORDONED
    same, changed = await store.set_runner_state(runner.id, RunnerState.CORDONED, actor="op")
    assert not changed and same is not None
    back, _ = await store.set_runner_state(runner.id, RunnerState.ACTIVE, actor="op")
    assert back is not None and back.state is RunnerState.ACTIVE
    beat = await store.runner_heartbeat(runner.id, version="1.1.0")
    assert beat is not None and beat.version == "1.1.0"
    gone, _ = await store.set_runner_state(runner.id, RunnerState.REVOKED, actor="op")
    assert gone is not None and gone.revoked_at is not None
    assert await store.runner_heartbeat(runner.id, version="1.1.0") is None
    with pytest.raises(StoreError, match="revoked"):
        await store.set_runner_state(runner.id, RunnerState.ACTIVE, actor="op")
    actions = [e.action for e in await store.list_audit()]
    assert "fleet.runner.revoke" in actions and "fleet.runner.cordon" in actions


async def test_a_silent_runner_is_marked_offline_once_per_outage(
    store: Store, store_url: str
) -> None:
    await store.create_fleet_token(hash_token("t"), ttl=DAY, actor="t")
    runner = await _join(store, "t", "a")
    assert isinstance(runner, Runner)
    assert await store.mark_offline_runners(15.0) == []
    later = store.now() + timedelta(seconds=16)
    other = await open_store(store_url)
    try:
        for s in (store, other):
            s.clock = lambda: later
        marked = await asyncio.gather(
            store.mark_offline_runners(15.0), other.mark_offline_runners(15.0)
        )
        assert sorted(len(m) for m in marked) == [0, 1]
        assert await store.mark_offline_runners(15.0) == []
        [anomaly] = await store.list_anomalies()
        assert anomaly.kind is AnomalyKind.RUNNER_OFFLINE and anomaly.subject == runner.id
        # it comes back, then goes silent again: a second outage, a second anomaly
        await store.runner_heartbeat(runner.id, version="1.0.0")
        again = later + timedelta(seconds=16)
        store.clock = lambda: again
        assert [r.id for r in await store.mark_offline_runners(15.0)] == [runner.id]
        assert len(await store.list_anomalies()) == 2
    finally:
        await other.close()


async def test_anomalies_are_listed_until_resolved(store: Store) -> None:
    made = await store.record_anomaly(AnomalyKind.RUN_STUCK, "run-1", {"why": "x"})
    assert await store.count_open_anomalies() == {"run_stuck": 1}
    resolved, changed = await store.resolve_anomaly(made.id, note="fixed", actor="op")
    assert changed and resolved is not None and resolved.resolution == "fixed"
    assert await store.list_anomalies() == []
    assert [a.id for a in await store.list_anomalies(include_resolved=True)] == [made.id]
    _, changed = await store.resolve_anomaly(made.id, note="again", actor="op")
    assert not changed
    assert await store.resolve_anomaly(999, note="x", actor="op") == (None, False)
    assert await store.count_open_anomalies() == {}


async def test_a_heartbeat_by_credential_is_one_statement_for_members_only(store: Store) -> None:
    await store.create_fleet_token(hash_token("t"), ttl=DAY, actor="t")
    runner = await _join(store, "t", "a")
    assert isinstance(runner, Runner)
    beat = await store.heartbeat_by_credential(hash_token("cred-a"), version="2.0")
    assert beat is not None and beat.id == runner.id and beat.version == "2.0"
    kept = await store.heartbeat_by_credential(hash_token("cred-a"), version="")
    assert kept is not None and kept.version == "2.0"  # an empty version changes nothing
    assert await store.heartbeat_by_credential(hash_token("cred-x"), version="1") is None
    await store.set_runner_state(runner.id, RunnerState.REVOKED, actor="op")
    assert await store.heartbeat_by_credential(hash_token("cred-a"), version="3") is None
    after = await store.get_runner(runner.id)
    assert after is not None and after.version == "2.0"


async def test_heartbeats_heard_together_each_get_their_own_answer(store: Store) -> None:
    """Heartbeats that arrive together (on PostgreSQL one statement for the lot) answer
    each runner alone: its own row and version, none for a revoked or unknown runner, and
    the last version of a runner heard twice."""
    await store.create_fleet_token(hash_token("t"), ttl=DAY, actor="t")
    names = ["a", "b", "c", "d"]
    for name in names:
        await store.create_fleet_token(hash_token(f"t-{name}"), ttl=DAY, actor="t")
        assert isinstance(await _join(store, f"t-{name}", name), Runner)
    revoked = await store.heartbeat_by_credential(hash_token("cred-d"), version="")
    assert revoked is not None
    await store.set_runner_state(revoked.id, RunnerState.REVOKED, actor="op")

    beats = await asyncio.gather(
        store.heartbeat_by_credential(hash_token("cred-a"), version="2.0"),
        store.heartbeat_by_credential(hash_token("cred-b"), version=""),
        store.heartbeat_by_credential(hash_token("cred-c"), version="3.0"),
        store.heartbeat_by_credential(hash_token("cred-d"), version="9.9"),
        store.heartbeat_by_credential(hash_token("cred-x"), version="1.0"),
        store.heartbeat_by_credential(hash_token("cred-c"), version=""),
    )
    a, b, c, d, unknown, c_again = beats
    assert a is not None and (a.name, a.version) == ("a", "2.0")
    assert b is not None and (b.name, b.version) == ("b", "1.0.0")  # empty: unchanged
    assert c is not None and c_again is not None
    assert (c.name, c.version) == (c_again.name, c_again.version) == ("c", "3.0")
    assert d is None and unknown is None
    kept = await store.get_runner(revoked.id)
    assert kept is not None and kept.version == "1.0.0" and kept.state is RunnerState.REVOKED
    for runner in (a, b, c):
        assert runner.last_heartbeat_at is not None


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_heartbeats_heard_together_share_a_round_trip(store_url: str) -> None:
    """PostgreSQL: 40 runners' heartbeats arriving together cost a few round trips, not
    40 (each was one statement of its own)."""
    from tests.store._roundtrips import counted_store

    async with counted_store(store_url) as (store, proxy):
        for n in range(40):
            await store.create_fleet_token(hash_token(f"t{n}"), ttl=DAY, actor="t")
            assert isinstance(await _join(store, f"t{n}", f"r{n}"), Runner)
        with proxy.counting() as seen:
            beats = await asyncio.gather(
                *(
                    store.heartbeat_by_credential(hash_token(f"cred-r{n}"), version="")
                    for n in range(40)
                )
            )
        assert sorted(b.name for b in beats if b is not None) == sorted(f"r{n}" for n in range(40))
        assert seen.statements <= 4, seen.queries
