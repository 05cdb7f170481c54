"""Operator tokens at the gateway: which tokens are accepted, under which name, for how
long after a revocation, and that every comparison is constant-time."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import corral.engine.token as token_module
from corral.engine.token import (
    TokenVerifier,
    check_token_name,
    hash_token,
    local_token,
    new_token,
    token_matches,
)
from corral.errors import UsageError
from corral.store import Store
from tests.gateway.fleet import TOKEN, running_fleet
from tests.scheduler.helpers import wait_for


def test_new_tokens_are_long_random_and_prefixed() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("crl_") and len(t) == 4 + 43 for t in tokens)
    assert hash_token("x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "env", "local", "a/b"])
def test_bad_token_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        check_token_name(name)


def test_good_token_names() -> None:
    for name in ("ci", "alice.smith", "prom-1", "A_b", "x" * 64):
        assert check_token_name(name) == name


def test_the_local_token_file_is_private_and_stable(tmp_path: Path) -> None:
    first = local_token(tmp_path)
    assert local_token(tmp_path) == first and len(first) >= 40
    assert (tmp_path / ".corral" / "operator-token").stat().st_mode & 0o777 == 0o600


async def test_the_verifier_names_the_token(store: Store) -> None:
    made = new_token()
    await store.create_operator_token("alice", hash_token(made), actor="test")
    verifier = TokenVerifier(store, {"env": "from-env", "local": "from-file"})
    assert await verifier.verify("from-env") == "env"
    assert await verifier.verify("from-file") == "local"
    assert await verifier.verify(made) == "alice"
    for wrong in (None, "", "from-env ", made[:-1], hash_token(made), "crl_x"):
        assert await verifier.verify(wrong) is None, wrong


async def test_a_revoked_token_stops_working_when_its_cache_lapses(store: Store) -> None:
    now = [100.0]
    made = new_token()
    await store.create_operator_token("ci", hash_token(made), actor="test")
    verifier = TokenVerifier(store, cache_seconds=2.0, clock=lambda: now[0])
    assert await verifier.verify(made) == "ci"
    await store.revoke_operator_token("ci", actor="test")
    now[0] += 1.9
    assert await verifier.verify(made) == "ci"  # still cached: at most CACHE_SECONDS
    now[0] += 0.2
    assert await verifier.verify(made) is None
    verifier.forget()
    assert await verifier.verify(made) is None


async def test_a_new_token_works_at_once(store: Store) -> None:
    verifier = TokenVerifier(store)
    made = new_token()
    assert await verifier.verify(made) is None  # unknown answers are not cached
    await store.create_operator_token("new", hash_token(made), actor="test")
    assert await verifier.verify(made) == "new"


async def test_comparisons_are_of_hashes_in_constant_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[str, str]] = []
    real: Callable[[str, str], bool] = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(token_module.hmac, "compare_digest", spy)
    verifier = TokenVerifier(store, {"env": "one", "local": "two"})
    assert await verifier.verify("two") == "local"
    # Every fixed token is compared (no early exit), digest against digest.
    assert compared == [
        (hash_token("two"), hash_token("one")),
        (hash_token("two"), hash_token("two")),
    ]
    compared.clear()
    assert token_matches("abc", "abc") and not token_matches("abc", "abd")
    assert compared == [
        (hash_token("abc"), hash_token("abc")),
        (hash_token("abc"), hash_token("abd")),
    ]
    assert not token_matches(None, "abc") and not token_matches("", "")


async def test_over_http_wrong_revoked_and_missing_tokens_get_401(
    tmp_path: Path, store: Store
) -> None:
    agents: dict[str, dict[str, object]] = {"dev": {"command": "true"}}
    async with running_fleet(tmp_path / "p", store, agents) as fleet:
        fleet.app.state.tokens.cache_seconds = 0.2
        made = new_token()
        await store.create_operator_token("ci", hash_token(made), actor="test")
        async with httpx.AsyncClient(base_url=fleet.url) as http:

            async def status(token: str | None) -> int:
                headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                return (await http.get("/control/status", headers=headers)).status_code

            assert await status(made) == 200
            assert await status(TOKEN) == 200  # the environment's token
            assert await status(None) == 401
            assert await status("crl_wrong") == 401
            await store.revoke_operator_token("ci", actor="test")

            async def refused() -> bool:
                return await status(made) == 401

            await wait_for(refused, timeout=3.0)
            answer = await http.get("/control/status", headers={"Authorization": f"Bearer {made}"})
            assert answer.json() == {
                "ok": False,
                "error": "a valid operator token is required (Authorization: Bearer <token>); "
                "`corral token create NAME` makes one",
            }
            assert answer.headers["www-authenticate"] == "Bearer"
