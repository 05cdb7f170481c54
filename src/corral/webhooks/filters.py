"""Which agents an event starts: each agent's ``[[webhooks]]`` filters against the event.

An entry matches when every filter it sets passes (AND across fields); a list
filter passes when any of its values does (OR within a list); an unset filter
does not constrain. An agent is started when any of its entries for the source
matches. The filters mean what Action Llama's mean:

- names are compared exactly, case included;
- a filter on something the event lacks does not pass (``actions`` on a push,
  ``labels`` on a push), except ``branches``, ``conclusions`` and Discord's
  ``channels``, which let an event without a branch, conclusion or channel through
  (so ``branches = ["main"]`` still takes issues);
- ``labels`` passes on the labels the issue or pull request has, whatever the event
  (adding ``bug`` to an issue labelled ``ready-for-dev`` passes ``labels =
  ["ready-for-dev"]``); ``labelMatch = "changed"`` makes a ``labeled``/``unlabeled``
  event pass only on the label it changed (an agent is not started again for an
  issue it was already started for);
- ``author`` is the issue's or pull request's author, on a comment or review too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from corral.project import Project, WebhookTrigger
from corral.webhooks.events import Event

__all__ = ["Match", "mismatch", "route"]


@dataclass(frozen=True, slots=True)
class Match:
    """One subscribed agent and whether the event starts it; ``reason`` says why (not)."""

    agent: str
    matched: bool
    reason: str


def route(project: Project, event: Event) -> list[Match]:
    """One :class:`Match` per agent (by name) with a ``[[webhooks]]`` entry for the
    event's source; agents that do not subscribe to the source are left out. Whether an
    agent is enabled or paused is not looked at: the caller records that."""
    found = []
    for name in sorted(project.agents):
        entries = [
            (index, trigger)
            for index, trigger in enumerate(project.agents[name].config.webhooks)
            if trigger.source == event.source
        ]
        if entries:
            found.append(_match(name, entries, event))
    return found


def _match(agent: str, entries: Sequence[tuple[int, WebhookTrigger]], event: Event) -> Match:
    failures = []
    for index, trigger in entries:
        reason = mismatch(trigger, event)
        if reason is None:
            return Match(agent, True, f"matched webhooks[{index}]")
        failures.append(f"webhooks[{index}]: {reason}")
    return Match(agent, False, "; ".join(failures))


def mismatch(trigger: WebhookTrigger, event: Event) -> str | None:
    """The first filter of ``trigger`` that ``event`` fails, in words; ``None`` if it matches.

    The source is not compared: :func:`route` only asks about entries for the event's.
    """
    for check in _CHECKS:
        reason = check(trigger, event)
        if reason is not None:
            return reason
    return None


# --- reading the event --------------------------------------------------------------


def _text(event: Event, key: str) -> str | None:
    value = event.trigger.get(key)
    return value if isinstance(value, str) and value else None


def _texts(event: Event, key: str) -> list[str]:
    value = event.trigger.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _shown(values: Iterable[str]) -> str:
    return repr(list(values))


def _one_of(what: str, have: str | None, allowed: Sequence[str], name: str) -> str | None:
    """The usual list filter: ``have`` must be one of ``allowed`` (the filter ``name``)."""
    if not allowed:
        return None
    if have is None:
        return f"event has no {what}, required by {name} {_shown(allowed)}"
    if have in allowed:
        return None
    return f"{what} {have!r} not in {name} {_shown(allowed)}"


# --- one check per filter field, in the order they are reported ----------------------


def _events(trigger: WebhookTrigger, event: Event) -> str | None:
    return _one_of("event", event.kind, trigger.events, "events")


def _actions(trigger: WebhookTrigger, event: Event) -> str | None:
    return _one_of("action", _text(event, "action"), trigger.actions, "actions")


def _repos(trigger: WebhookTrigger, event: Event) -> str | None:
    return _one_of("repo", _text(event, "repo"), trigger.repos, "repos")


def _orgs(trigger: WebhookTrigger, event: Event) -> str | None:
    allowed = [*trigger.orgs, *([trigger.org] if trigger.org else [])]
    if not allowed:
        return None
    repo = _text(event, "repo")
    owner = repo.split("/", 1)[0] if repo and "/" in repo else None
    have = list(dict.fromkeys(n for n in (_text(event, "org"), owner) if n))
    if not have:
        return f"event has no org or repo owner, required by orgs {_shown(allowed)}"
    if set(have) & set(allowed):
        return None
    return f"org {' / '.join(map(repr, have))} not in orgs {_shown(allowed)}"


def _labels(trigger: WebhookTrigger, event: Event) -> str | None:
    """The labels the issue or pull request has; with ``labelMatch = "changed"``, a
    ``labeled`` or ``unlabeled`` event passes on the label it changed only."""
    if not trigger.labels:
        return None
    changed = _text(event, "label")
    if trigger.label_match == "changed" and _text(event, "action") in _LABEL_ACTIONS:
        if changed in trigger.labels:
            return None
        return (
            f"label filter {_shown(trigger.labels)} does not have the changed label "
            f'{changed!r} (labelMatch = "changed")'
        )
    labels = _texts(event, "labels")
    if set(labels) & set(trigger.labels):
        return None
    return f"label filter {_shown(trigger.labels)} matched none of {_shown(labels)}"


_LABEL_ACTIONS = frozenset({"labeled", "unlabeled"})


def _assignee(trigger: WebhookTrigger, event: Event) -> str | None:
    """The issue's or pull request's assignee (GitHub's ``assignee``: the first)."""
    if trigger.assignee is None:
        return None
    assignee = _text(event, "assignee")
    if assignee is None:
        return f"event has no assignee, required by assignee {trigger.assignee!r}"
    if assignee == trigger.assignee:
        return None
    return f"assignee {assignee!r} is not {trigger.assignee!r}"


def _author(trigger: WebhookTrigger, event: Event) -> str | None:
    if trigger.author is None:
        return None
    author = _text(event, "author")
    if author is None:
        return f"event has no author, required by author {trigger.author!r}"
    if author == trigger.author:
        return None
    return f"author {author!r} is not {trigger.author!r}"


def _branches(trigger: WebhookTrigger, event: Event) -> str | None:
    """The pushed branch, a pull request's head branch, a run's head branch; an event
    without a branch passes."""
    return _if_present("branch", _text(event, "branch"), trigger.branches, "branches")


def _if_present(what: str, have: str | None, allowed: Sequence[str], name: str) -> str | None:
    """A filter an event without the field passes (Action Llama's ``branches``)."""
    if not allowed or have is None or have in allowed:
        return None
    return f"{what} {have!r} not in {name} {_shown(allowed)}"


def _conclusions(trigger: WebhookTrigger, event: Event) -> str | None:
    have = _text(event, "conclusion")
    return _if_present("conclusion", have, trigger.conclusions, "conclusions")


def _resources(trigger: WebhookTrigger, event: Event) -> str | None:
    """Sentry's resource (``Sentry-Hook-Resource``) is the event name."""
    return _one_of("resource", event.kind, trigger.resources, "resources")


def _organizations(trigger: WebhookTrigger, event: Event) -> str | None:
    """Linear's organization id is the trigger's ``org``."""
    return _one_of("organization", _text(event, "org"), trigger.organizations, "organizations")


def _projects(trigger: WebhookTrigger, event: Event) -> str | None:
    """Mintlify's project (and Sentry's project slug) is the trigger's ``repo``."""
    return _one_of("project", _text(event, "repo"), trigger.projects, "projects")


def _guilds(trigger: WebhookTrigger, event: Event) -> str | None:
    """Discord's guild is the trigger's ``repo``."""
    return _one_of("guild", _text(event, "repo"), trigger.guilds, "guilds")


def _team_ids(trigger: WebhookTrigger, event: Event) -> str | None:
    """Slack's team (workspace) is the trigger's ``repo``."""
    return _one_of("team", _text(event, "repo"), trigger.team_ids, "team_ids")


def _users(trigger: WebhookTrigger, event: Event) -> str | None:
    """X's subscribed account (``for_user_id``) is the trigger's ``repo``."""
    return _one_of("user", _text(event, "repo"), trigger.users, "users")


def _channels(trigger: WebhookTrigger, event: Event) -> str | None:
    """Slack: an event without a channel does not pass; Discord: it does."""
    channel = _text(event, "channel")
    if event.trigger.get("source") == "discord":
        return _if_present("channel", channel, trigger.channels, "channels")
    return _one_of("channel", channel, trigger.channels, "channels")


def _commands(trigger: WebhookTrigger, event: Event) -> str | None:
    """Discord: a slash command's (or its autocomplete's) name; other interactions pass."""
    if not trigger.commands or event.kind not in _COMMAND_EVENTS:
        return None
    return _one_of("command", _text(event, "title"), trigger.commands, "commands")


_COMMAND_EVENTS = frozenset({"application_command", "autocomplete"})


_CHECKS: tuple[Callable[[WebhookTrigger, Event], str | None], ...] = (
    _events,
    _actions,
    _repos,
    _orgs,
    _labels,
    _assignee,
    _author,
    _branches,
    _conclusions,
    _resources,
    _organizations,
    _projects,
    _guilds,
    _team_ids,
    _users,
    _channels,
    _commands,
)
