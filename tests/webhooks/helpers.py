"""Payloads, sources and projects for the webhook tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.project import Project, ProjectConfig, WebhookSource, load_project
from corral.webhooks import Delivery, Event, parse
from tests.webhooks.signing import SECRET, sign_generic, sign_github

__all__ = [
    "FIXTURES",
    "GITHUB_EVENTS",
    "RECEIVED",
    "RECEIVED_TEXT",
    "delivery_for",
    "event_for",
    "fixture",
    "fixture_json",
    "source",
    "write_project",
]

FIXTURES = Path(__file__).with_name("fixtures")
#: The GitHub events with a fixture, each a trimmed copy of a real delivery's shape.
GITHUB_EVENTS = (
    "issues",
    "issue_comment",
    "pull_request",
    "pull_request_review",
    "push",
    "check_run",
    "workflow_run",
)


def fixture(event: str) -> bytes:
    """The body of the fixture ``fixtures/<event>.json``, as bytes on the wire."""
    return (FIXTURES / f"{event}.json").read_bytes()


def fixture_json(event: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(fixture(event))
    return loaded


def source(name: str = "my-github", **table: Any) -> WebhookSource:
    """A source as a project's ``[webhooks.<name>]`` table would make it (named, defaults
    filled); ``table`` is in TOML spelling: ``type="generic", allowUnsigned=True``."""
    table.setdefault("type", "github")
    return ProjectConfig.model_validate({"webhooks": {name: table}}).webhooks[name]


#: When the deliveries these helpers make were received: the trigger's ``timestamp``.
RECEIVED = datetime(2026, 3, 24, 14, 30, 0, 250_000, tzinfo=UTC)
RECEIVED_TEXT = "2026-03-24T14:30:00.250Z"


def delivery_for(
    event: str, name: str = "my-github", secret: str = SECRET, body: bytes | None = None
) -> Delivery:
    """A GitHub delivery of the fixture ``event`` (or ``body``), signed with ``secret``,
    received at :data:`RECEIVED`."""
    raw = fixture(event) if body is None else body
    return Delivery(name, sign_github(raw, secret, event=event), raw, RECEIVED)


def event_for(kind: str, name: str = "my-github", **trigger: Any) -> Event:
    """An event from a generic sender whose body is ``trigger`` (the trigger JSON's keys)."""
    generic = source(name, type="generic")
    body = json.dumps({"event": kind, **trigger}).encode()
    return parse(generic, Delivery(name, sign_generic(body, SECRET), body, RECEIVED))


SKILL = "---\nname: {name}\ndescription: Test agent\n---\n\nDo the work.\n"


def write_project(root: Path, sources: str, agents: dict[str, str]) -> Project:
    """A project on disk: ``sources`` is config.toml's [webhooks.*] tables, ``agents``
    maps each agent's name to the [[webhooks]] tables of its config.toml."""
    (root / "config.toml").write_text(sources, encoding="utf-8")
    for name, tables in agents.items():
        folder = root / "agents" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "SKILL.md").write_text(SKILL.format(name=name), encoding="utf-8")
        config = 'harness = { command = "true" }\n' + tables
        (folder / "config.toml").write_text(config, encoding="utf-8")
    return load_project(root)
