"""Which agents an event starts: each agent's ``[[webhooks]]`` filters against the event.

An entry matches when every filter it sets passes (AND across fields); a list
filter passes when any of its values does (OR within a list); an unset filter
does not constrain. A filter on something the event does not have (``branches``
on an issue) does not pass: write separate entries for events that differ. An
agent is started when any of its entries for the source matches. Names are
compared case-insensitively (GitHub's logins, repositories and labels are), except
branches, which git keeps case-sensitive.
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


def _fold(values: Iterable[str]) -> set[str]:
    return {value.casefold() for value in values}


def _shown(values: Iterable[str]) -> str:
    return repr(list(values))


def _one_of(what: str, have: str | None, allowed: Sequence[str], name: str) -> str | None:
    """The usual list filter: ``have`` must be one of ``allowed`` (the filter ``name``)."""
    if not allowed:
        return None
    if have is None:
        return f"event has no {what}, required by {name} {_shown(allowed)}"
    if have.casefold() in _fold(allowed):
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
    if _fold(have) & _fold(allowed):
        return None
    return f"org {' / '.join(map(repr, have))} not in orgs {_shown(allowed)}"


def _labels(trigger: WebhookTrigger, event: Event) -> str | None:
    """A ``labeled`` or ``unlabeled`` event matches on the label it changed (adding
    ``bug`` to an issue that already has ``agent`` does not start the ``agent`` agent
    again); any other event on the labels it has."""
    if not trigger.labels:
        return None
    changed = _text(event, "label")
    if _text(event, "action") in _LABEL_ACTIONS and changed:
        if _fold([changed]) & _fold(trigger.labels):
            return None
        return f"label filter {_shown(trigger.labels)} does not have the changed label {changed!r}"
    labels = _texts(event, "labels")
    if _fold(labels) & _fold(trigger.labels):
        return None
    return f"label filter {_shown(trigger.labels)} matched none of {_shown(labels)}"


_LABEL_ACTIONS = frozenset({"labeled", "unlabeled"})


def _assignee(trigger: WebhookTrigger, event: Event) -> str | None:
    if trigger.assignee is None:
        return None
    assignees = _texts(event, "assignees")
    if not assignees:
        return f"event has no assignee, required by assignee {trigger.assignee!r}"
    if trigger.assignee.casefold() in _fold(assignees):
        return None
    return f"assignee {trigger.assignee!r} not among assignees {_shown(assignees)}"


def _author(trigger: WebhookTrigger, event: Event) -> str | None:
    if trigger.author is None:
        return None
    author = _text(event, "author")
    if author is None:
        return f"event has no author, required by author {trigger.author!r}"
    if author.casefold() == trigger.author.casefold():
        return None
    return f"author {author!r} is not {trigger.author!r}"


def _branches(trigger: WebhookTrigger, event: Event) -> str | None:
    """A pull request (or its review) passes on its head or its base branch."""
    if not trigger.branches:
        return None
    head, base = _text(event, "branch"), _text(event, "baseBranch")
    if head is None and base is None:
        return f"event has no branch, required by branches {_shown(trigger.branches)}"
    if head in trigger.branches or base in trigger.branches:
        return None
    named = (("branch", head), ("base branch", base))
    shown = " / ".join(f"{what} {name!r}" for what, name in named if name)
    return f"{shown} not in branches {_shown(trigger.branches)}"


def _conclusions(trigger: WebhookTrigger, event: Event) -> str | None:
    have = _text(event, "conclusion")
    return _one_of("conclusion", have, trigger.conclusions, "conclusions")


def _resources(trigger: WebhookTrigger, event: Event) -> str | None:
    """Sentry's resource (``Sentry-Hook-Resource``) is the event name."""
    return _one_of("resource", event.kind, trigger.resources, "resources")


def _organizations(trigger: WebhookTrigger, event: Event) -> str | None:
    """Linear's organization id is the trigger's ``org``."""
    return _one_of("organization", _text(event, "org"), trigger.organizations, "organizations")


def _projects(trigger: WebhookTrigger, event: Event) -> str | None:
    """Mintlify's project (and Sentry's project slug) is the trigger's ``repo``."""
    return _one_of("project", _text(event, "repo"), trigger.projects, "projects")


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
)
