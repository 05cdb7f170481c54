"""Slack, Discord and X sources: their signature schemes with real keys, their checks
(Slack's challenge, Discord's PING, X's CRC), their events and filters as Action Llama
reads them. The deliveries over HTTP are in test_messaging_intake.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from corral.credentials import CredentialError, CredentialStore
from corral.errors import ConfigError
from corral.project import WebhookTrigger
from corral.webhooks import Delivery, mismatch, parse, signing_secret, verify
from corral.webhooks.schemes import crc_response, crc_token_problem
from tests.webhooks.helpers import RECEIVED, RECEIVED_TEXT, source, write_project
from tests.webhooks.signing import (
    SECRET,
    discord_keys,
    sign_discord,
    sign_slack,
    sign_twitter,
    twitter_signature,
)

NOW = 1_774_449_000  # the clock the Slack checks run at


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def entry(name: str, **filters: Any) -> WebhookTrigger:
    return WebhookTrigger.model_validate({"source": name, **filters})


# --- Slack ---------------------------------------------------------------------------

SLACK = source("my-slack", type="slack", credential="MainWorkspace")


def slack_message(**event: Any) -> dict[str, Any]:
    return {
        "token": "unused",
        "team_id": "T0123456789",
        "api_app_id": "A0123",
        "type": "event_callback",
        "event_id": "Ev08MFMKH6",
        "event_time": NOW,
        "event": {
            "type": "message",
            "channel": "C0123456789",
            "user": "U0ABCDEF",
            "text": "deploy api to staging please",
            "ts": "1774449000.000200",
            **event,
        },
    }


def slack(payload: dict[str, Any], **signing: Any) -> Delivery:
    body = dumps(payload)
    return Delivery("my-slack", sign_slack(body, SECRET, **signing), body, RECEIVED)


def test_slack_v0_signatures_are_checked_within_five_minutes() -> None:
    ok = verify(SLACK, SECRET, slack(slack_message(), timestamp=NOW - 299), now=NOW)
    assert (ok.ok, ok.detail) == (True, "valid signature")
    wrong = verify(
        SLACK, "another-secret-0123456789", slack(slack_message(), timestamp=NOW), now=NOW
    )
    assert (wrong.ok, wrong.detail) == (False, "signature does not match")
    old = verify(SLACK, SECRET, slack(slack_message(), timestamp=NOW - 301), now=NOW)
    assert not old.ok and old.detail.startswith("X-Slack-Request-Timestamp is 301 s old")
    ahead = verify(SLACK, SECRET, slack(slack_message(), timestamp=NOW + 400), now=NOW)
    assert not ahead.ok and "400 s in the future" in ahead.detail


def test_a_slack_signature_covers_the_timestamp() -> None:
    signed = slack(slack_message(), timestamp=NOW)
    moved = dict(signed.headers) | {"x-slack-request-timestamp": str(NOW + 1)}
    check = verify(SLACK, SECRET, Delivery("my-slack", moved, signed.body), now=NOW)
    assert (check.ok, check.detail) == (False, "signature does not match")


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"x-slack-request-timestamp": None}, "no X-Slack-Request-Timestamp header"),
        ({"x-slack-request-timestamp": "soon"}, "malformed X-Slack-Request-Timestamp header"),
        ({"x-slack-signature": "v1=" + "0" * 64}, "malformed X-Slack-Signature header"),
        ({"x-slack-signature": None}, "no X-Slack-Signature header"),
    ],
)
def test_a_malformed_slack_delivery_is_refused_saying_what(
    change: dict[str, str | None], detail: str
) -> None:
    signed = slack(slack_message(), timestamp=NOW)
    headers = {k: v for k, v in (dict(signed.headers) | change).items() if v is not None}
    check = verify(SLACK, SECRET, Delivery("my-slack", headers, signed.body), now=NOW)
    assert not check.ok and check.detail.startswith(detail)


def test_slack_url_verification_is_answered_with_its_challenge() -> None:
    body = {"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    event = parse(SLACK, slack({**body, "type": "url_verification"}))
    assert event.ping and event.reply == {"challenge": body["challenge"]}


def test_slack_events_read_as_action_llama_reads_them() -> None:
    event = parse(SLACK, slack(slack_message()))
    assert (event.kind, event.delivery_id, event.ping) == ("message", "Ev08MFMKH6", False)
    trigger = event.trigger
    assert (trigger["source"], trigger["repo"], trigger["sender"]) == (
        "slack",
        "T0123456789",
        "U0ABCDEF",
    )
    assert (trigger["body"], trigger["channel"], trigger["timestamp"]) == (
        "deploy api to staging please",
        "C0123456789",
        RECEIVED_TEXT,
    )
    reaction: dict[str, Any] = {"type": "reaction_added", "user": "U0ABCDEF", "reaction": "eyes"}
    reaction["item"] = {"type": "message", "channel": "C0999", "ts": "1.2"}
    payload = slack_message()
    payload["event"] = reaction
    added = parse(SLACK, slack(payload)).trigger
    assert (added["event"], added["title"], added["channel"]) == ("reaction_added", "eyes", "C0999")


def test_a_slack_envelope_that_is_not_an_event_starts_nothing() -> None:
    event = parse(SLACK, slack({"type": "app_rate_limited", "team_id": "T1"}))
    assert (event.kind, event.ping, event.reply) == ("app_rate_limited", True, None)


def test_slack_filters() -> None:
    message = parse(SLACK, slack(slack_message()))
    assert mismatch(entry("my-slack", events=["message", "app_mention"]), message) is None
    assert mismatch(entry("my-slack", channels=["C0123456789"]), message) is None
    assert mismatch(entry("my-slack", channels=["C0999"]), message) == (
        "channel 'C0123456789' not in channels ['C0999']"
    )
    assert mismatch(entry("my-slack", team_ids=["T0123456789"]), message) is None
    assert mismatch(entry("my-slack", team_ids=["T9"]), message) == (
        "team 'T0123456789' not in team_ids ['T9']"
    )
    # An event without a channel does not pass a channels filter (as in Action Llama).
    payload = slack_message()
    payload["event"] = {"type": "team_join", "user": {"id": "U1"}}
    joined = parse(SLACK, slack(payload))
    assert mismatch(entry("my-slack", channels=["C0123456789"]), joined) == (
        "event has no channel, required by channels ['C0123456789']"
    )


# --- Discord -------------------------------------------------------------------------

DISCORD = source("my-discord", type="discord", credential="MyBot")
PRIVATE, PUBLIC = discord_keys()


def interaction(kind: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": "1234567890123456789",
        "application_id": "987654321",
        "type": kind,
        "token": "unused",
        "version": 1,
        **fields,
    }


COMMAND = interaction(
    2,
    guild_id="1111",
    channel_id="2222",
    member={"user": {"id": "42", "username": "octo"}, "roles": []},
    data={
        "id": "55",
        "name": "deploy",
        "type": 1,
        "options": [{"name": "service", "type": 3, "value": "api"}],
    },
)


def discord(payload: dict[str, Any], key: Any = PRIVATE, stamp: str = "1774449000") -> Delivery:
    body = dumps(payload)
    return Delivery("my-discord", sign_discord(body, key, timestamp=stamp), body, RECEIVED)


def test_discord_ed25519_signatures_are_checked_with_the_public_key() -> None:
    assert verify(DISCORD, PUBLIC, discord(COMMAND), now=NOW).ok
    other, _ = discord_keys()
    wrong = verify(DISCORD, PUBLIC, discord(COMMAND, key=other), now=NOW)
    assert (wrong.ok, wrong.detail) == (False, "signature does not match")
    signed = discord(COMMAND)
    tampered = Delivery("my-discord", signed.headers, signed.body.replace(b"api", b"db"))
    assert verify(DISCORD, PUBLIC, tampered, now=NOW).detail == "signature does not match"
    restamped = dict(signed.headers) | {"x-signature-timestamp": "1774449001"}
    assert not verify(DISCORD, PUBLIC, Delivery("my-discord", restamped, signed.body), now=NOW).ok


def test_a_discord_key_or_signature_of_the_wrong_shape_is_refused_saying_what() -> None:
    bad_key = verify(DISCORD, "not-a-key", discord(COMMAND), now=NOW)
    assert not bad_key.ok and "is not 64 hex digits" in bad_key.detail
    signed = discord(COMMAND)
    short = dict(signed.headers) | {"x-signature-ed25519": "ab" * 10}
    check = verify(DISCORD, PUBLIC, Delivery("my-discord", short, signed.body), now=NOW)
    assert check.detail == "malformed X-Signature-Ed25519 header: expected 128 hex digits"
    unstamped = {k: v for k, v in signed.headers.items() if k != "x-signature-timestamp"}
    check = verify(DISCORD, PUBLIC, Delivery("my-discord", unstamped, signed.body), now=NOW)
    assert check.detail == "no X-Signature-Timestamp header"


def test_a_discord_ping_is_answered_with_a_pong() -> None:
    event = parse(DISCORD, discord(interaction(1)))
    assert (event.kind, event.ping, event.reply, event.delivery_id) == (
        "ping",
        True,
        {"type": 1},
        None,
    )


def test_discord_interactions_read_as_action_llama_reads_them() -> None:
    event = parse(DISCORD, discord(COMMAND))
    assert (event.kind, event.delivery_id) == ("application_command", "1234567890123456789")
    trigger = event.trigger
    assert {k: trigger[k] for k in ("action", "title", "body", "repo", "channel", "sender")} == {
        "action": "deploy",
        "title": "deploy",
        "body": "service: api",
        "repo": "1111",
        "channel": "2222",
        "sender": "octo",
    }
    button = interaction(3, guild_id="1111", data={"custom_id": "approve", "component_type": 2})
    pressed = parse(DISCORD, discord(button))
    assert (pressed.kind, pressed.trigger["action"], pressed.trigger["title"]) == (
        "message_component",
        "2",
        "approve",
    )
    assert parse(DISCORD, discord(interaction(9))).ping  # an unknown type starts nothing


def test_discord_filters() -> None:
    event = parse(DISCORD, discord(COMMAND))
    button = parse(DISCORD, discord(interaction(3, data={"custom_id": "approve"})))
    assert mismatch(entry("my-discord", events=["application_command"]), event) is None
    assert mismatch(entry("my-discord", guilds=["1111"]), event) is None
    assert mismatch(entry("my-discord", guilds=["9"]), event) == "guild '1111' not in guilds ['9']"
    assert mismatch(entry("my-discord", channels=["2222"]), event) is None
    assert mismatch(entry("my-discord", channels=["9"]), event) is not None
    assert mismatch(entry("my-discord", channels=["9"]), button) is None  # no channel: passes
    assert mismatch(entry("my-discord", commands=["deploy", "ask"]), event) is None
    assert mismatch(entry("my-discord", commands=["ask"]), event) == (
        "command 'deploy' not in commands ['ask']"
    )
    assert mismatch(entry("my-discord", commands=["ask"]), button) is None  # not a command


# --- X (Twitter) ---------------------------------------------------------------------

TWITTER = source("my-twitter", type="twitter", credential="MyXApp")
CONSUMER_SECRET = "x-consumer-secret-0123456789abcdef"
TWEET = {
    "for_user_id": "2244994945",
    "tweet_create_events": [
        {
            "created_at": "Wed Mar 25 14:30:00 +0000 2026",
            "id_str": "1774449000123",
            "text": "@acmebot the build is red again",
            "user": {"id_str": "6253282", "screen_name": "jdoe"},
        }
    ],
}


def tweet(payload: dict[str, Any], secret: str = CONSUMER_SECRET) -> Delivery:
    body = dumps(payload)
    return Delivery("my-twitter", sign_twitter(body, secret), body, RECEIVED)


def test_x_signatures_are_base64_hmacs_of_the_body() -> None:
    assert verify(TWITTER, CONSUMER_SECRET, tweet(TWEET)).ok
    wrong = verify(TWITTER, CONSUMER_SECRET, tweet(TWEET, secret="another-secret-0123456"))
    assert (wrong.ok, wrong.detail) == (False, "signature does not match")
    signed = tweet(TWEET)
    hexed = {"x-twitter-webhooks-signature": "sha256=" + "ab" * 32}
    check = verify(TWITTER, CONSUMER_SECRET, Delivery("t", hexed, signed.body))
    assert not check.ok and check.detail.startswith("malformed X-Twitter-Webhooks-Signature")


def test_the_crc_answer_is_the_base64_hmac_of_the_token() -> None:
    token = "UjZ0ZmV4c2Q3M2Y4c2RmZ2hqa2w"
    digest = hmac.new(CONSUMER_SECRET.encode(), token.encode(), hashlib.sha256).digest()
    assert crc_response(CONSUMER_SECRET, token) == "sha256=" + base64.b64encode(digest).decode()
    assert crc_token_problem(token) is None


def test_a_crc_token_that_could_be_a_body_is_refused() -> None:
    """The CRC answer is signed with the key that signs deliveries: answering any token
    would sign any body. A JSON object holds "{", which no CRC token may."""
    body = dumps(TWEET)
    assert crc_token_problem(body.decode()) is not None
    assert crc_token_problem(None) is not None and crc_token_problem("") is not None
    assert crc_token_problem("a" * 257) is not None
    # What an answer to that token would have been is a valid signature of the body.
    assert (
        twitter_signature(body, CONSUMER_SECRET)
        == sign_twitter(body, CONSUMER_SECRET)["X-Twitter-Webhooks-Signature"]
    )


def test_x_events_read_as_action_llama_reads_them() -> None:
    event = parse(TWITTER, tweet(TWEET))
    assert (event.kind, event.ping) == ("tweet_create_events", False)
    assert event.delivery_id == "sha256:" + hashlib.sha256(tweet(TWEET).body).hexdigest()
    trigger = event.trigger
    assert {
        k: trigger[k] for k in ("action", "repo", "sender", "title", "body", "url", "timestamp")
    } == {
        "action": "create",
        "repo": "2244994945",
        "sender": "jdoe",
        "title": "@acmebot the build is red again",
        "body": "@acmebot the build is red again",
        "url": "https://twitter.com/jdoe/status/1774449000123",
        "timestamp": "2026-03-25T14:30:00Z",  # the tweet's time, as Action Llama takes it
    }
    follow = {
        "for_user_id": "2244994945",
        "follow_events": [
            {
                "type": "follow",
                "created_timestamp": "1774449000000",
                "source": {"id": "1", "screen_name": "fan"},
                "target": {"id": "2244994945", "screen_name": "acmebot"},
            }
        ],
    }
    followed = parse(TWITTER, tweet(follow)).trigger
    assert (followed["event"], followed["action"], followed["title"], followed["sender"]) == (
        "follow_events",
        "follow",
        "@fan followed @acmebot",
        "fan",
    )
    assert followed["timestamp"] == "2026-03-25T14:30:00Z"
    dm = {
        "for_user_id": "2244994945",
        "direct_message_events": [
            {
                "type": "message_create",
                "created_timestamp": "1774449000000",
                "message_create": {"sender_id": "6253282", "message_data": {"text": "hi"}},
            }
        ],
    }
    message = parse(TWITTER, tweet(dm)).trigger
    assert (message["action"], message["sender"], message["body"]) == ("message", "6253282", "hi")
    assert parse(TWITTER, tweet({"for_user_id": "1"})).ping  # no event list: nothing


def test_x_filters() -> None:
    event = parse(TWITTER, tweet(TWEET))
    assert mismatch(entry("my-twitter", events=["tweet_create_events"]), event) is None
    assert mismatch(entry("my-twitter", events=["follow_events"]), event) is not None
    assert mismatch(entry("my-twitter", users=["2244994945"]), event) is None
    assert mismatch(entry("my-twitter", repos=["2244994945"]), event) is None  # as AL maps it
    assert mismatch(entry("my-twitter", users=["1"]), event) == (
        "user '2244994945' not in users ['1']"
    )


# --- configuration and secrets ------------------------------------------------------


def test_the_fixed_schemes_take_no_scheme_settings(tmp_path: Path) -> None:
    for kind in ("slack", "discord", "twitter"):
        toml = f'[webhooks.s]\ntype = "{kind}"\nsignatureHeader = "X-Other"\n'
        (tmp_path / kind).mkdir()
        with pytest.raises(ConfigError, match=f"which a {kind} source does not take"):
            write_project(tmp_path / kind, toml, {})


def test_each_source_reads_action_llamas_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slack: a signing secret (``slack_signing_secret`` is ``webhook_secret``); Discord:
    ``discord_bot``'s public key; X: ``x_twitter_api``'s consumer secret."""
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    creds = CredentialStore()
    with pytest.raises(CredentialError, match="discord_bot:MyBot"):
        signing_secret(DISCORD, creds)
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
    assert signing_secret(SLACK, creds) == SECRET
    assert signing_secret(DISCORD, creds) == PUBLIC
    assert signing_secret(TWITTER, creds) == CONSUMER_SECRET
    # Written as webhook_secret:NAME, it is a webhook secret for any type.
    creds.add("webhook_secret", "x-only", {"secret": "x-gateway-only-0123456789"})
    only = source("t2", type="twitter", credential="webhook_secret:x-only")
    assert signing_secret(only, creds) == "x-gateway-only-0123456789"


def test_without_a_secret_the_refusal_names_the_credential_to_add() -> None:
    body = dumps(COMMAND)
    check = verify(source("d", type="discord"), None, Delivery("d", {}, body))
    assert not check.ok and "corral creds add discord_bot:INSTANCE" in check.detail


def _now() -> float:
    return time.time()


def test_an_unsigned_slack_delivery_is_accepted_only_with_allow_unsigned() -> None:
    body = dumps(slack_message())
    open_slack = source("open", type="slack", allowUnsigned=True)
    check = verify(open_slack, None, Delivery("open", {}, body), now=_now())
    assert (check.ok, check.signed) == (True, False)
    assert not verify(SLACK, None, Delivery("my-slack", {}, body)).ok


# --- Review findings: what a stranger sends never raises, replays are refused ------------


@pytest.mark.parametrize("stamp", ["\u00b2", "\u0661\u0662", "12.5", "-1", "1" * 13, " "])
def test_a_timestamp_of_non_ascii_digits_is_refused_not_raised(stamp: str) -> None:
    """ "²".isdigit() is True but int("²") raises: a sender's header reached int() and the
    gateway answered 500. Both Slack and Discord take ASCII digits only."""
    signed = slack(slack_message(), timestamp=NOW)
    headers = dict(signed.headers) | {"x-slack-request-timestamp": stamp}
    check = verify(SLACK, SECRET, Delivery("my-slack", headers, signed.body), now=NOW)
    assert not check.ok and "X-Slack-Request-Timestamp" in check.detail
    d_signed = discord(COMMAND, stamp=stamp)
    check = verify(DISCORD, PUBLIC, d_signed, now=NOW)
    assert not check.ok and "X-Signature-Timestamp" in check.detail


def test_a_discord_timestamp_far_from_now_is_refused() -> None:
    """Action Llama checks the signature only, so a captured interaction could be replayed
    days later; corral refuses one signed more than 5 minutes from now."""
    assert verify(DISCORD, PUBLIC, discord(COMMAND, stamp=str(NOW - 299)), now=NOW).ok
    old = verify(DISCORD, PUBLIC, discord(COMMAND, stamp=str(NOW - 86_400)), now=NOW)
    assert not old.ok and old.detail.startswith("X-Signature-Timestamp is 86400 s old")
    ahead = verify(DISCORD, PUBLIC, discord(COMMAND, stamp=str(NOW + 400)), now=NOW)
    assert not ahead.ok and "in the future" in ahead.detail
    garbage = verify(DISCORD, PUBLIC, discord(COMMAND, stamp="not-a-time"), now=NOW)
    assert not garbage.ok and garbage.detail.startswith("malformed X-Signature-Timestamp")


SMALL_ORDER_KEYS = [
    "00" * 32,
    "00" * 31 + "80",
    "01" + "00" * 31,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "ec" + "ff" * 30 + "7f",
    "ED" + "FF" * 30 + "FF",
]


@pytest.mark.parametrize("key", SMALL_ORDER_KEYS)
def test_a_discord_public_key_of_small_order_is_refused(key: str) -> None:
    """With the all-zero key (a placeholder) an all-zero signature checked for any body:
    a forged interaction was queued. Such keys are refused, saying what to store."""
    body = dumps(COMMAND)
    forged = {"x-signature-timestamp": str(NOW), "x-signature-ed25519": "00" * 64}
    forged_r = {"x-signature-timestamp": str(NOW), "x-signature-ed25519": "01" + "00" * 63}
    for headers in (forged, forged_r):
        check = verify(DISCORD, key, Delivery("my-discord", headers, body), now=NOW)
        assert not check.ok and "weak key" in check.detail, check.detail
        assert "Public Key from the Discord Developer Portal" in check.detail


@pytest.mark.parametrize(
    "event",
    [
        {"follow_events": [{"created_timestamp": "1" + "0" * 400, "source": {}}]},
        {"follow_events": [{"created_timestamp": 1e308, "source": {}}]},
        {"direct_message_events": [{"created_timestamp": "9" * 5000}]},
        {"tweet_create_events": [{"created_at": "Mon Jan 01 00:00:00 +0100 0001", "text": "x"}]},
        {"tweet_create_events": [{"created_at": "Fri Dec 31 23:59:59 -0100 9999", "text": "x"}]},
    ],
)
def test_x_times_out_of_range_are_left_out_not_raised(event: dict[str, Any]) -> None:
    """A 400-digit created_timestamp overflowed a float and year 1 at +01:00 is before
    datetime's first instant: both raised out of parse and the gateway answered 500."""
    parsed = parse(TWITTER, tweet({"for_user_id": "1", **event}))
    assert parsed.trigger["timestamp"] == RECEIVED_TEXT  # the time it was received


def test_an_x_delivery_is_identified_by_the_hash_of_its_body() -> None:
    """X sends no delivery id and signs no timestamp: the body's SHA-256 stands in, so the
    same signed body again is a duplicate (see test_messaging_intake for the store)."""
    first, again = parse(TWITTER, tweet(TWEET)), parse(TWITTER, tweet(TWEET))
    assert first.delivery_id == again.delivery_id
    assert first.delivery_id is not None and first.delivery_id.startswith("sha256:")
    other = parse(TWITTER, tweet(TWEET | {"for_user_id": "2"}))
    assert other.delivery_id != first.delivery_id
