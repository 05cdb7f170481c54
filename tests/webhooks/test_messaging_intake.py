"""Slack, Discord and X deliveries over real HTTP to a running scheduler and gateway, on
both stores: each sender's check is answered as it expects, a delivery signed with a real
key is recorded and its run queued and run, and a bad one is refused with a receipt."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.credentials import CredentialStore
from corral.store import ReceiptOutcome, RunState, Store
from tests.gateway.fleet import Fleet, running_fleet
from tests.webhooks.signing import (
    SECRET,
    discord_keys,
    sign_discord,
    sign_slack,
    sign_twitter,
    twitter_signature,
)

PROJECT = """
[webhooks.slack]
type = "slack"
credential = "MainWorkspace"

[webhooks.discord]
type = "discord"
credential = "MyBot"

[webhooks.twitter]
type = "twitter"
credential = "MyXApp"

[webhooks.gh]
type = "github"
allowUnsigned = true
"""
TABLES = {
    "chat": '[[webhooks]]\nsource = "slack"\nevents = ["app_mention"]\n'
    'channels = ["C0123456789"]\n',
    "bot": '[[webhooks]]\nsource = "discord"\nevents = ["application_command"]\n'
    'commands = ["deploy"]\nguilds = ["1111"]\n',
    "social": '[[webhooks]]\nsource = "twitter"\nevents = ["tweet_create_events"]\n'
    'users = ["2244994945"]\n',
}
AGENTS: dict[str, dict[str, object]] = {name: {"command": "true"} for name in TABLES}
PRIVATE, PUBLIC = discord_keys()
CONSUMER_SECRET = "x-consumer-secret-0123456789abcdef"


@dataclass
class Gateway:
    fleet: Fleet
    http: httpx.AsyncClient

    @property
    def store(self) -> Store:
        return self.fleet.store

    async def post(self, source: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(f"/webhooks/{source}", content=body, headers=headers)

    async def queued_run(self, agent: str, answer: dict[str, Any]) -> dict[str, Any]:
        """The finished run the accepted delivery ``answer`` queued for ``agent``; its
        trigger JSON."""
        assert answer["queued"] == [agent], answer
        (run,) = await self.fleet.finished(agent, 1)
        assert run.state is RunState.SUCCEEDED, run.error
        assert run.trigger_detail is not None
        assert run.trigger_detail["receiptId"] == answer["receiptId"]
        return run.trigger_detail


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CredentialStore:
    """Each source's secret under Action Llama's credential names."""
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    creds = CredentialStore()
    creds.add("slack_signing_secret", "MainWorkspace", {"secret": SECRET})
    creds.add(
        "discord_bot",
        "MyBot",
        {"application_id": "987654321", "public_key": PUBLIC, "bot_token": "bot-token-0123456789"},
    )
    creds.add(
        "x_twitter_api",
        "MyXApp",
        {
            "consumer_key": "consumer-key-0123456789",
            "consumer_secret": CONSUMER_SECRET,
            "bearer_token": "bearer-token-0123456789",
        },
    )
    return creds


@contextlib.asynccontextmanager
async def gateway(root: Path, store: Store) -> AsyncIterator[Gateway]:
    async with (
        running_fleet(root, store, AGENTS, PROJECT, TABLES) as fleet,
        httpx.AsyncClient(base_url=fleet.url, timeout=30) as http,
    ):
        yield Gateway(fleet, http)


@pytest.fixture
async def hook(
    tmp_path: Path, store: Store, credentials: CredentialStore
) -> AsyncIterator[Gateway]:
    async with gateway(tmp_path / "p", store) as running:
        yield running


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


async def refused(hook: Gateway, response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    answer = response.json()
    assert answer["ok"] is False and answer["error"].startswith(detail)
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.REFUSED
    assert not receipt.verified and receipt.error is not None
    assert receipt.error.startswith(detail)


async def test_slack_challenge_event_and_refusals(hook: Gateway) -> None:
    challenge = {"token": "t", "challenge": "3eZbrw1aBm2rZgRNF", "type": "url_verification"}
    body = dumps(challenge)
    response = await hook.post("slack", body, sign_slack(body, SECRET))
    assert (response.status_code, response.json()) == (200, {"challenge": "3eZbrw1aBm2rZgRNF"})
    (ping,) = await hook.store.list_receipts(source="slack")
    assert ping.outcome is ReceiptOutcome.PING and ping.event == "url_verification"

    mention = {
        "team_id": "T0123456789",
        "type": "event_callback",
        "event_id": "Ev1",
        "event": {"type": "app_mention", "channel": "C0123456789", "user": "U1", "text": "hi"},
    }
    body = dumps(mention)
    response = await hook.post("slack", body, sign_slack(body, SECRET))
    assert response.status_code == 202, response.text
    trigger = await hook.queued_run("chat", response.json())
    assert (trigger["source"], trigger["event"], trigger["repo"], trigger["channel"]) == (
        "slack",
        "app_mention",
        "T0123456789",
        "C0123456789",
    )
    # Slack's retry of the same event_id is a duplicate.
    again = await hook.post("slack", body, sign_slack(body, SECRET))
    assert again.status_code == 200 and again.json()["duplicate"] is True

    stale = sign_slack(body, SECRET, timestamp=int(time.time()) - 600)
    await refused(hook, await hook.post("slack", body, stale), "X-Slack-Request-Timestamp is")
    forged = sign_slack(body, "not-the-signing-secret-0123")
    await refused(hook, await hook.post("slack", body, forged), "signature does not match")
    # A refused challenge gets no answer to its challenge.
    body = dumps(challenge)
    await refused(
        hook, await hook.post("slack", body, sign_slack(body, "wrong-secret-0123456789")), "sig"
    )


async def test_discord_ping_command_and_refusals(hook: Gateway) -> None:
    ping = dumps({"id": "1", "application_id": "9", "type": 1, "token": "t", "version": 1})
    response = await hook.post("discord", ping, sign_discord(ping, PRIVATE))
    assert (response.status_code, response.json()) == (200, {"type": 1})

    command = {
        "id": "1234567890123456789",
        "type": 2,
        "guild_id": "1111",
        "channel_id": "2222",
        "member": {"user": {"id": "42", "username": "octo"}},
        "data": {"name": "deploy", "options": [{"name": "service", "value": "api"}]},
    }
    body = dumps(command)
    response = await hook.post("discord", body, sign_discord(body, PRIVATE))
    assert response.status_code == 202, response.text
    trigger = await hook.queued_run("bot", response.json())
    assert (trigger["action"], trigger["body"], trigger["repo"], trigger["sender"]) == (
        "deploy",
        "service: api",
        "1111",
        "octo",
    )

    stranger, _ = discord_keys()
    await refused(
        hook, await hook.post("discord", ping, sign_discord(ping, stranger)), "signature does"
    )
    assert await hook.store.list_items(agent="bot") != []


async def test_x_crc_tweet_and_refusals(hook: Gateway) -> None:
    token = "UjZ0ZmV4c2Q3M2Y4c2RmZ2hqa2w"
    response = await hook.http.get("/webhooks/twitter", params={"crc_token": token})
    assert response.status_code == 200, response.text
    assert response.json() == {"response_token": twitter_signature(token.encode(), CONSUMER_SECRET)}
    for params, status, error in [
        ({}, 400, "no crc_token"),
        ({"crc_token": '{"for_user_id":"1"}'}, 400, "the crc_token is not a token X sends"),
    ]:
        answer = await hook.http.get("/webhooks/twitter", params=params)
        assert answer.status_code == status and answer.json()["error"].startswith(error)
    for name in ("slack", "nope"):
        answer = await hook.http.get(f"/webhooks/{name}", params={"crc_token": token})
        assert answer.status_code == 404
        assert "answered for twitter sources only" in answer.json()["error"]

    tweet = {
        "for_user_id": "2244994945",
        "tweet_create_events": [
            {
                "created_at": "Wed Mar 25 14:30:00 +0000 2026",
                "id_str": "1774449000123",
                "text": "@acmebot the build is red",
                "user": {"id_str": "6253282", "screen_name": "jdoe"},
            }
        ],
    }
    body = dumps(tweet)
    response = await hook.post("twitter", body, sign_twitter(body, CONSUMER_SECRET))
    assert response.status_code == 202, response.text
    trigger = await hook.queued_run("social", response.json())
    assert (trigger["event"], trigger["action"], trigger["repo"], trigger["sender"]) == (
        "tweet_create_events",
        "create",
        "2244994945",
        "jdoe",
    )
    forged = sign_twitter(body, "not-the-consumer-secret")
    await refused(hook, await hook.post("twitter", body, forged), "signature does not match")


# --- Review findings over HTTP: 4xx with a receipt, never a 500; replays refused ---------


async def test_odd_timestamps_and_times_get_an_answer_not_a_500(hook: Gateway) -> None:
    """A Slack timestamp of "²" (latin-1 0xB2: isdigit() but not int()) was an
    unauthenticated 500; X times out of datetime's range were a 500 after the signature."""
    body = b'{"type":"event_callback"}'
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": b"\xb2",
        "X-Slack-Signature": "v0=" + "0" * 64,
    }
    response = await hook.http.post("/webhooks/slack", content=body, headers=headers)
    await refused(hook, response, "malformed X-Slack-Request-Timestamp")
    for event in (
        {"follow_events": [{"created_timestamp": "1" + "0" * 400, "source": {}}]},
        {"tweet_create_events": [{"created_at": "Mon Jan 01 00:00:00 +0100 0001", "text": "x"}]},
    ):
        body = dumps({"for_user_id": "2244994945", **event})
        response = await hook.post("twitter", body, sign_twitter(body, CONSUMER_SECRET))
        assert response.status_code == 202, response.text


async def test_a_replayed_x_delivery_is_a_duplicate(hook: Gateway) -> None:
    """X sends no delivery id and its signature covers no time: the same signed body
    was queued every time it was sent. Now it is queued once."""
    tweet = {
        "for_user_id": "2244994945",
        "tweet_create_events": [
            {
                "created_at": "Wed Mar 25 14:30:00 +0000 2026",
                "id_str": "77",
                "text": "hi",
                "user": {"id_str": "6253282", "screen_name": "jdoe"},
            }
        ],
    }
    body = dumps(tweet)
    headers = sign_twitter(body, CONSUMER_SECRET)
    first = await hook.post("twitter", body, headers)
    assert first.status_code == 202, first.text
    assert first.json()["deliveryId"].startswith("sha256:")
    await hook.queued_run("social", first.json())
    for _ in range(2):
        again = await hook.post("twitter", body, headers)
        assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
    assert len(await hook.store.list_items(agent="social")) == 1


async def test_a_stale_or_garbled_discord_timestamp_is_refused(hook: Gateway) -> None:
    body = dumps({"id": "555", "type": 2, "guild_id": "1111", "data": {"name": "deploy"}})
    year_old = sign_discord(body, PRIVATE, timestamp=str(int(time.time()) - 86400 * 365))
    await refused(hook, await hook.post("discord", body, year_old), "X-Signature-Timestamp is")
    garbled = sign_discord(body, PRIVATE, timestamp="not-a-time")
    await refused(hook, await hook.post("discord", body, garbled), "malformed X-Signature-Time")
    assert await hook.store.list_items(agent="bot") == []


async def test_a_weak_discord_key_and_the_x_crc_advice(
    tmp_path: Path, store: Store, credentials: CredentialStore
) -> None:
    """A discord_bot whose public_key is all zeros (a placeholder) took an all-zero
    signature for any body; and the CRC answer of a twitter source with no credential
    named the wrong credential type to store."""
    credentials.add(
        "discord_bot",
        "Placeholder",
        {"application_id": "1", "public_key": "00" * 32, "bot_token": "bot-token-0123456789"},
    )
    project = (
        '[webhooks.discord]\ntype = "discord"\ncredential = "Placeholder"\n'
        '[webhooks.x]\ntype = "twitter"\nallowUnsigned = true\n'
    )
    tables = {"bot": '[[webhooks]]\nsource = "discord"\n', "social": '[[webhooks]]\nsource = "x"\n'}
    agents: dict[str, dict[str, object]] = {
        "bot": {"command": "true"},
        "social": {"command": "true"},
    }
    async with (
        running_fleet(tmp_path / "w", store, agents, project, tables) as fleet,
        httpx.AsyncClient(base_url=fleet.url, timeout=30) as http,
    ):
        running = Gateway(fleet, http)
        body = dumps({"id": "1", "type": 2, "guild_id": "1", "data": {"name": "deploy"}})
        forged = {
            "Content-Type": "application/json",
            "X-Signature-Timestamp": str(int(time.time())),
            "X-Signature-Ed25519": "00" * 64,
        }
        await refused(running, await running.post("discord", body, forged), "the public key")
        assert await store.list_items(agent="bot") == []
        crc = await http.get("/webhooks/x", params={"crc_token": "abc"})
        assert crc.status_code == 400
        assert "`corral creds add x_twitter_api:INSTANCE`" in crc.json()["error"]


async def test_any_failure_in_a_check_or_a_reader_is_a_4xx_with_a_receipt(
    hook: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 9: whatever a sender's bytes make a check or a reader raise (a fault
    injected here, as no known input does any more), the answer is a 4xx and a receipt."""
    from corral.webhooks import events, schemes

    def boom(*_: object) -> Any:
        raise RuntimeError("unforeseen")

    monkeypatch.setitem(schemes.SCHEMES, "slack", boom)  # type: ignore[arg-type]
    body = dumps({"type": "event_callback"})
    await refused(hook, await hook.post("slack", body, sign_slack(body, SECRET)), "the signature")
    monkeypatch.setitem(events._MESSAGING, "twitter", boom)
    body = dumps({"for_user_id": "1"})
    response = await hook.post("twitter", body, sign_twitter(body, CONSUMER_SECRET))
    assert response.status_code == 400, response.text
    receipt = await hook.store.get_receipt(response.json()["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.INVALID
    assert receipt.error is not None and "RuntimeError" in receipt.error
