"""Who sees the dashboard: without a valid token, nothing but the login page; changes
only from the dashboard's own pages (CSRF token, same origin); revocation applies.

HTTP behaviour only, so on SQLite alone; the other dashboard tests run on both stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.engine.token import hash_token
from corral.store import ReceiptOutcome, Store, open_store
from tests.dashboard.support import ACTOR, TOKEN, DashFleet, Events, login

PAGES = [
    "/dashboard",
    "/dashboard/",
    "/dashboard/queue",
    "/dashboard/locks",
    "/dashboard/calls",
    "/dashboard/receipts",
    "/dashboard/agents/dev",
    "/dashboard/runs",
    "/dashboard/runs?agent=dev&q=step",
    "/dashboard/runs/{run}",
    "/dashboard/receipts/{receipt}",
    "/dashboard/session",
]
STREAMS = [
    "/dashboard/events/fleet",
    "/dashboard/events/queue",
    "/dashboard/events/locks",
    "/dashboard/events/agent?agent=dev",
    "/dashboard/events/runs",
    "/dashboard/events/runs?agent=dev",
    "/dashboard/runs/{run}/events",
]
POSTS = [
    "/dashboard/pause",
    "/dashboard/resume",
    "/dashboard/agents/dev/trigger",
    "/dashboard/agents/dev/pause",
    "/dashboard/agents/dev/disable",
    "/dashboard/agents/dev/scale",
    "/dashboard/runs/{run}/kill",
    "/dashboard/locks/release",
    "/dashboard/receipts/{receipt}/replay",
    "/dashboard/logout",
]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await open_store(f"sqlite:///{tmp_path / 'state.db'}") as opened:
        yield opened


async def _some_data(fleet: DashFleet, http: httpx.AsyncClient) -> dict[str, str]:
    """A live run with a status text, and a webhook receipt: things not to leak."""
    await fleet.trigger("dev")
    run = await fleet.running("dev")
    answer = await http.post("/webhooks/open", json={"secret-ish": "payload-value"})
    assert answer.status_code == 202, answer.text
    return {"run": run.id, "receipt": answer.json()["receiptId"]}


@pytest.mark.parametrize("cookie", [None, "wrong-token", ""])
async def test_without_a_valid_token_every_page_is_the_login_page(
    fleet: DashFleet, http: httpx.AsyncClient, cookie: str | None
) -> None:
    ids = await _some_data(fleet, http)
    if cookie is not None:
        http.cookies.set("corral_dashboard", cookie, path="/dashboard")
    secrets = [ids["run"], ids["receipt"], "step", "payload-value", "locker", "hooked"]
    for template in PAGES:
        path = template.format(**ids)
        answer = await http.get(path)
        if path == "/dashboard/session":
            assert answer.status_code == 401, path
        else:
            assert answer.status_code == 303, path
            location = answer.headers["location"]
            assert location.startswith("/dashboard/login?next=/dashboard"), path
        assert not any(secret in answer.text for secret in secrets), path
    for template in STREAMS:
        path = template.format(**ids)
        answer = await http.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["content-type"].startswith("text/plain"), path
        assert not any(secret in answer.text for secret in secrets), path
    for template in POSTS:
        path = template.format(**ids)
        plain = await http.post(path, data={"scale": "5", "key": "deploy://api-prod"})
        assert plain.status_code == 401, path
        htmx = await http.post(path, headers={"HX-Request": "true"})
        assert htmx.status_code == 401 and "/dashboard/login" in htmx.headers["hx-redirect"]
    login_page = await http.get("/dashboard/login")
    assert login_page.status_code == 200 and 'name="token"' in login_page.text
    assert not any(secret in login_page.text for secret in secrets)
    assert await fleet.store.list_audit() == []  # nothing was done
    assert not (await fleet.store.project_state()).paused
    assert len(await fleet.store.list_receipts()) == 1  # nothing replayed


async def test_static_files_need_no_session_and_nothing_else_is_served(
    http: httpx.AsyncClient,
) -> None:
    htmx = await http.get("/dashboard/static/vendor/htmx.min.js")
    assert htmx.status_code == 200 and "javascript" in htmx.headers["content-type"]
    assert (await http.get("/dashboard/static/vendor/LICENSE.htmx")).status_code == 200
    for path in ("../_auth.py", "..%2f_auth.py", "templates/base.html", "nope.css"):
        assert (await http.get(f"/dashboard/static/{path}")).status_code == 404, path


async def test_logging_in_sets_a_strict_http_only_cookie(
    fleet: DashFleet, http: httpx.AsyncClient
) -> None:
    wrong = await http.post("/dashboard/login", data={"token": "nope", "next": "/dashboard"})
    assert wrong.status_code == 401 and "not a valid operator token" in wrong.text
    assert "set-cookie" not in wrong.headers
    answer = await http.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard/queue"})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/queue"
    cookie = answer.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/dashboard"):
        assert attribute in cookie
    page = await http.get("/dashboard")
    assert page.status_code == 200 and 'data-agent="dev"' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/control/x"])
async def test_login_goes_nowhere_but_the_dashboard(http: httpx.AsyncClient, target: str) -> None:
    answer = await http.post("/dashboard/login", data={"token": TOKEN, "next": target})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"


async def test_a_login_from_another_site_is_refused(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        "/dashboard/login",
        data={"token": TOKEN},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert answer.status_code == 403 and "set-cookie" not in answer.headers


async def test_buttons_need_the_csrf_token_and_the_same_origin(
    fleet: DashFleet, signed_in: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    http, headers = signed_in
    refused = [
        {"HX-Request": "true"},
        {**headers, "X-CSRF-Token": "0" * 40},
        {**headers, "Origin": "https://evil.example"},
        {**headers, "Origin": "null"},
        {**headers, "Sec-Fetch-Site": "cross-site"},
        {**headers, "Sec-Fetch-Site": "same-site"},
    ]
    for bad in refused:
        answer = await http.post("/dashboard/pause", headers=bad)
        assert answer.status_code == 403, bad
        assert "did not come from this dashboard" in answer.text
    assert not (await fleet.store.project_state()).paused
    ok = {**headers, "Origin": fleet.url, "Sec-Fetch-Site": "same-origin"}
    answer = await http.post("/dashboard/pause", headers=ok)
    assert answer.status_code == 200 and "Paused the project" in answer.text
    assert (await fleet.store.project_state()).paused
    [entry] = await fleet.store.list_audit()
    assert (entry.actor, entry.action) == (ACTOR, "project.pause")


async def test_logging_out_ends_the_session(
    signed_in: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    http, headers = signed_in
    answer = await http.post("/dashboard/logout", headers=headers)
    assert answer.status_code == 204 and answer.headers["hx-redirect"] == "/dashboard/login"
    assert 'corral_dashboard=""' in answer.headers["set-cookie"]
    assert (await http.get("/dashboard")).status_code == 303


async def test_a_store_token_works_until_revoked_even_in_an_open_stream(
    fleet: DashFleet, http: httpx.AsyncClient
) -> None:
    token = "crl_dashboard-test-alice-0123456789"
    await fleet.store.create_operator_token("alice", hash_token(token), actor="test")
    headers = await login(http, token)
    answer = await http.post("/dashboard/agents/dev/pause", headers=headers)
    assert answer.status_code == 200
    assert (await fleet.store.list_audit())[0].actor == "dashboard:alice"
    fleet.dashboard.recheck = 0.2
    async with http.stream("GET", "/dashboard/events/fleet") as stream:
        events = Events(stream)
        await events.until("fleet", 'data-agent="dev"')
        await fleet.store.revoke_operator_token("alice", actor="test")
        fleet.app.state.tokens.forget()  # the verifier's 2 s cache, at once
        with pytest.raises(EOFError):
            await events.until("never", timeout=5)
    assert (await http.get("/dashboard")).status_code == 303
    assert (await http.get("/dashboard/events/fleet")).status_code == 401
    answer = await http.post("/dashboard/agents/dev/resume", headers=headers)
    assert answer.status_code == 401
    assert [a.paused for a in await fleet.store.agent_states() if a.agent == "dev"] == [True]


async def test_receipts_are_shown_to_operators_only(
    fleet: DashFleet, signed_in: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    http, _ = signed_in
    await http.post("/webhooks/open", json={"x": 1})
    [receipt] = await fleet.store.list_receipts()
    assert receipt.outcome is ReceiptOutcome.ACCEPTED
    page = await http.get(f"/dashboard/receipts/{receipt.id}")
    assert page.status_code == 200 and receipt.id in page.text
    http.cookies.clear()
    assert (await http.get(f"/dashboard/receipts/{receipt.id}")).status_code == 303
