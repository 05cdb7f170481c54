"""Operator tokens in the store: kept by hash, names never reused, revocation, audit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from corral.engine.token import hash_token, new_token
from corral.errors import StoreError
from corral.store import Store

RawSql = Callable[[str, str], list[tuple[Any, ...]]]


async def test_a_token_is_kept_by_its_hash_only(store: Store, raw_sql: RawSql) -> None:
    token = new_token()
    made = await store.create_operator_token("ci", hash_token(token), actor="cli:me@here")
    assert (made.name, made.last_used_at, made.revoked_at, made.revoked) == (
        "ci",
        None,
        None,
        False,
    )
    rows = raw_sql(store.url, "SELECT name, token_hash FROM corral_operator_tokens")
    assert rows == [("ci", hash_token(token))]
    assert token not in repr(rows)  # the token itself is nowhere
    [entry] = await store.list_audit()
    assert (entry.actor, entry.action, entry.subject) == ("cli:me@here", "token.create", "ci")


async def test_names_are_never_reused(store: Store) -> None:
    await store.create_operator_token("ci", hash_token(new_token()), actor="a")
    with pytest.raises(StoreError, match="named 'ci' exists already"):
        await store.create_operator_token("ci", hash_token(new_token()), actor="a")
    await store.revoke_operator_token("ci", actor="a")
    with pytest.raises(StoreError, match="revoked token keeps its name"):
        await store.create_operator_token("ci", hash_token(new_token()), actor="a")
    assert [t.name for t in await store.list_operator_tokens()] == ["ci"]


async def test_use_finds_live_tokens_and_records_the_last_use(store: Store) -> None:
    token = new_token()
    await store.create_operator_token("alice", hash_token(token), actor="a")
    assert await store.use_operator_token(hash_token("crl_not-a-token")) is None
    used = await store.use_operator_token(hash_token(token))
    assert used is not None and used.name == "alice" and used.last_used_at is not None
    [listed] = await store.list_operator_tokens()
    assert listed.last_used_at == used.last_used_at
    # Within a minute the last use is not written again (one write a minute, not a request).
    again = await store.use_operator_token(hash_token(token))
    assert again is not None and again.last_used_at == used.last_used_at
    later = used.last_used_at + timedelta(seconds=61)
    store.clock = lambda: later
    moved = await store.use_operator_token(hash_token(token))
    assert moved is not None and moved.last_used_at == later
    assert (await store.list_operator_tokens())[0].last_used_at == later


async def test_revoke(store: Store) -> None:
    token = new_token()
    await store.create_operator_token("bob", hash_token(token), actor="a")
    await store.create_operator_token("carol", hash_token(new_token()), actor="a")
    assert await store.count_live_operator_tokens() == 2
    revoked = await store.revoke_operator_token("bob", actor="token:carol")
    assert revoked is not None and revoked.revoked and revoked.revoked_at is not None
    assert await store.use_operator_token(hash_token(token)) is None
    assert await store.count_live_operator_tokens() == 1
    again = await store.revoke_operator_token("bob", actor="token:carol")
    assert again == revoked  # unchanged, and not audited twice
    assert await store.revoke_operator_token("nobody", actor="a") is None
    actions = [(e.actor, e.action, e.subject) for e in await store.list_audit()]
    assert actions == [
        ("token:carol", "token.revoke", "bob"),
        ("a", "token.create", "carol"),
        ("a", "token.create", "bob"),
    ]


async def test_audit_records_an_action_with_its_detail(store: Store) -> None:
    await store.audit("token:ci", "agent.scale", "dev", {"scale": 3, "was": 1})
    [entry] = await store.list_audit()
    assert (entry.actor, entry.action, entry.subject, entry.detail) == (
        "token:ci",
        "agent.scale",
        "dev",
        {"scale": 3, "was": 1},
    )
