"""Slack, Discord and X deliveries into trigger fields, read as Action Llama reads them.

All three name the event in the body, and all three are read best-effort (what is
missing or shaped otherwise is ``null``). Each also sends requests that are not events:
Slack's ``url_verification`` and Discord's PING are answered with what the sender
expects (``reply``); a Slack envelope that is not an ``event_callback``, a Discord
interaction type corral does not know and an X body without an event list start
nothing (``idle``), as in Action Llama.

Where Action Llama puts things (its trigger context has few keys): ``repo`` is the
Slack team, the Discord guild or the X account the events are for (``for_user_id``), so
``repos`` filters on it as ``team_ids``, ``guilds`` and ``users`` do; the channel is
corral's ``channel`` key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from corral.webhooks._json import Node, PayloadError, epoch_utc
from corral.webhooks._trigger import Fields

__all__ = ["Reading", "discord_read", "slack_read", "twitter_read"]


@dataclass
class Reading:
    """What a delivery from one of these senders is: its event name and fields, its id,
    and whether it is a check to answer (``reply``) or nothing to act on (``idle``)."""

    kind: str
    fields: Fields = field(default_factory=Fields)
    delivery_id: str | None = None
    reply: dict[str, Any] | None = None
    idle: bool = False


def _empty(path: str) -> Node:
    return Node({}, path, strict=False)


# --- Slack (the Events API) ------------------------------------------------------------


def slack_read(body: Node) -> Reading:
    envelope = body.text("type")
    if envelope == "url_verification":
        challenge = body.text("challenge")
        if not challenge:
            raise PayloadError("the url_verification request has no 'challenge' string")
        return Reading("url_verification", reply={"challenge": challenge})
    if envelope != "event_callback":
        return Reading(envelope or "event", idle=True)
    event = body.obj("event")
    if event is None:
        raise PayloadError("the event_callback has no 'event' object")
    kind = event.text("type") or "event"
    fields = Fields(
        repo=body.text("team_id"),
        sender=event.text("user") or event.text("bot_id"),
    )
    if kind in ("reaction_added", "reaction_removed"):
        item = event.obj("item") or _empty("event.item")
        fields.title = event.text("reaction")
        fields.channel = item.text("channel")
    else:
        fields.body = event.text("text")
        fields.channel = event.text("channel")
        if kind not in ("message", "app_mention"):
            fields.title = kind
    # Slack retries a delivery with the same event_id: it is the delivery id.
    return Reading(kind, fields, delivery_id=body.text("event_id"))


# --- Discord (the Interactions Endpoint) ------------------------------------------------

_PING = 1
_INTERACTIONS = {
    2: "application_command",
    3: "message_component",
    4: "autocomplete",
    5: "modal_submit",
}


def discord_read(body: Node) -> Reading:
    kind = body.integer("type")
    if kind == _PING:
        return Reading("ping", reply={"type": 1})  # PONG
    name = _INTERACTIONS.get(kind or 0)
    if name is None:
        return Reading(f"interaction_{kind}" if kind is not None else "interaction", idle=True)
    data = body.obj("data") or _empty("data")
    member = body.obj("member")
    user = (member.obj("user") if member else None) or body.obj("user")
    fields = Fields(
        repo=body.text("guild_id"),
        channel=body.text("channel_id"),
        sender=user.text("username") if user else None,
    )
    if name in ("application_command", "autocomplete"):
        fields.action = fields.title = data.text("name")
        if name == "application_command":
            fields.body = _options(data)
    elif name == "message_component":
        component = data.data.get("component_type")
        fields.action = str(component) if isinstance(component, int) else None
        fields.title = data.text("custom_id") or "component"
    else:
        fields.action = fields.title = data.text("custom_id") or "modal"
    return Reading(name, fields, delivery_id=body.text("id"))


def _options(data: Node) -> str | None:
    """A slash command's options as ``name: value, ...``."""
    options = data.data.get("options")
    if not isinstance(options, list):
        return None
    said = [
        f"{option.get('name')}: {option.get('value')}"
        for option in options
        if isinstance(option, dict) and "value" in option
    ]
    return ", ".join(said) or None


# --- X (the Account Activity API) --------------------------------------------------------

_METADATA = frozenset({"for_user_id", "user_has_blocked"})


def twitter_read(body: Node) -> Reading:
    """The event is the body's first list (``tweet_create_events``, ``follow_events``, ...);
    the action is its last word before ``_events`` (``create``, ``follow``)."""
    key = next(
        (k for k, v in body.data.items() if k not in _METADATA and isinstance(v, list)), None
    )
    if key is None:
        return Reading("event", Fields(repo=body.text("for_user_id")), idle=True)
    action = key.removesuffix("_events").rsplit("_", 1)[-1]
    fields = Fields(action=action, repo=body.text("for_user_id"))
    events = body.data[key]
    first = events[0] if events and isinstance(events[0], dict) else None
    if first is not None:
        item = Node(first, f"{key}[0]", strict=False)
        reader = _TWITTER.get(key)
        if reader is not None:
            reader(item, fields)
        elif key in _RELATIONS:
            _relation(item, fields, _RELATIONS[key])
        else:
            fields.title = key
    else:
        fields.title = key
    return Reading(key, fields)


def _tweet_time(item: Node) -> str | None:
    """``created_at`` as X writes it (``Wed Oct 10 20:19:24 +0000 2018``), in UTC."""
    text = item.text("created_at")
    if text is None:
        return None
    try:
        moment = datetime.strptime(text.strip(), "%a %b %d %H:%M:%S %z %Y")
        # Year 1 with a positive offset is before datetime's first instant in UTC.
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError):
        return item.time("created_at")


def _millis(item: Node, key: str) -> str | None:
    value = item.data.get(key)
    try:
        return epoch_utc(int(value) / 1000) if value is not None else None
    except (TypeError, ValueError, OverflowError):  # a 400-digit number overflows a float
        return None


def _status_url(user: Node | None, status: Node) -> str | None:
    name = user.text("screen_name") if user else None
    ident = status.text("id_str")
    return f"https://twitter.com/{name}/status/{ident}" if name and ident else None


def _tweet(item: Node, fields: Fields) -> None:
    user = item.obj("user")
    fields.sender = (user.text("screen_name") or user.text("id_str")) if user else None
    fields.title = fields.body = item.text("text")
    fields.url = _status_url(user, item)
    fields.timestamp = _tweet_time(item)


def _tweet_delete(item: Node, fields: Fields) -> None:
    status = item.obj("status") or _empty("status")
    fields.sender = status.text("user_id")
    fields.title = f"Deleted tweet {status.text('id') or 'unknown'}"
    fields.timestamp = _millis(item, "timestamp_ms")


def _favorite(item: Node, fields: Fields) -> None:
    user = item.obj("user")
    liked = item.obj("favorited_status") or _empty("favorited_status")
    author = liked.obj("user")
    fields.sender = (user.text("screen_name") or user.text("id_str")) if user else None
    fields.title = (
        f"Liked tweet by @{(author.text('screen_name') if author else None) or 'unknown'}"
    )
    fields.body = liked.text("text")
    fields.url = _status_url(author, liked)
    fields.timestamp = _tweet_time(item)


_RELATIONS = {
    "follow_events": "followed",
    "unfollow_events": "unfollowed",
    "block_events": "blocked",
    "unblock_events": "unblocked",
    "mute_events": "muted",
    "unmute_events": "unmuted",
}


def _relation(item: Node, fields: Fields, verb: str) -> None:
    source = item.obj("source") or _empty("source")
    target = item.obj("target") or _empty("target")
    fields.sender = source.text("screen_name") or source.text("id")
    who = source.text("screen_name") or "unknown"
    whom = target.text("screen_name") or "unknown"
    fields.title = f"@{who} {verb} @{whom}"
    fields.timestamp = _millis(item, "created_timestamp")


def _direct_message(item: Node, fields: Fields) -> None:
    create = item.obj("message_create") or _empty("message_create")
    data = create.obj("message_data") or _empty("message_data")
    fields.sender = create.text("sender_id")
    fields.title = f"Direct message from {fields.sender or 'unknown'}"
    fields.body = data.text("text")
    fields.timestamp = _millis(item, "created_timestamp")


def _dm_signal(what: str) -> Callable[[Node, Fields], None]:
    def read(item: Node, fields: Fields) -> None:
        fields.sender = item.text("sender_id")
        fields.title = f"{what} {fields.sender or 'unknown'}"
        fields.timestamp = _millis(item, "created_timestamp")

    return read


_TWITTER: dict[str, Callable[[Node, Fields], None]] = {
    "tweet_create_events": _tweet,
    "tweet_delete_events": _tweet_delete,
    "favorite_events": _favorite,
    "direct_message_events": _direct_message,
    "direct_message_indicate_typing_events": _dm_signal("Typing indicator from"),
    "direct_message_mark_read_events": _dm_signal("Message read by"),
}
