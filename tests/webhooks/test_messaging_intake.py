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
