"""``[[webhooks]]`` filters: each field, AND across fields, OR within a list, and route()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from corral.project import WebhookTrigger
from corral.webhooks import Event, Match, mismatch, parse, route
from tests.webhooks.helpers import (
    delivery_for,
    event_for,
    fixture_json,
    source,
    write_project,
)


def entry(**filters: Any) -> WebhookTrigger:
    return WebhookTrigger.model_validate({"source": "my-github", **filters})


def github(kind: str) -> Event:
    return parse(source(), delivery_for(kind))


ISSUE = github("issues")  # labeled; acme/widgets; labels bug, agent; by jdoe; to octocat


def _opened() -> Event:
    body = fixture_json("issues")
    body["action"] = "opened"
    del body["label"]
    return parse(source(), delivery_for("issues", body=json.dumps(body).encode()))


OPENED = _opened()  # the same issue, opened: no changed label
PULL = github("pull_request")  # fix/safari-login -> main
PUSH = github("push")  # main
CHECK = github("check_run")  # failure on fix/safari-login


def test_no_filter_matches_everything() -> None:
    for event in (ISSUE, PULL, PUSH, CHECK):
        assert mismatch(entry(), event) is None


# One case per filter field: (filters, event, None when it matches else the reason).
CASES: list[tuple[dict[str, Any], Event, str | None]] = [
    ({"events": ["issues", "push"]}, ISSUE, None),
    ({"events": ["push"]}, ISSUE, "event 'issues' not in events ['push']"),
    ({"actions": ["opened", "labeled"]}, ISSUE, None),
    ({"actions": ["closed"]}, ISSUE, "action 'labeled' not in actions ['closed']"),
    ({"actions": ["opened"]}, PUSH, "event has no action, required by actions ['opened']"),
    ({"repos": ["ACME/Widgets"]}, ISSUE, None),
    ({"repos": ["acme/api"]}, ISSUE, "repo 'acme/widgets' not in repos ['acme/api']"),
    ({"orgs": ["other", "Acme"]}, ISSUE, None),
    ({"org": "acme"}, PUSH, None),
    ({"orgs": ["other"]}, ISSUE, "org 'acme' not in orgs ['other']"),
    ({"org": "other", "orgs": ["else"]}, PUSH, "org 'acme' not in orgs ['else', 'other']"),
    ({"labels": ["agent", "triage"]}, ISSUE, None),
    ({"labels": ["Agent"]}, ISSUE, None),
    # A labeled event matches on the label it added ("agent"), not the others it has.
    ({"labels": ["bug"]}, ISSUE, "label filter ['bug'] does not have the changed label 'agent'"),
    ({"labels": ["triage"]}, OPENED, "label filter ['triage'] matched none of ['bug', 'agent']"),
    ({"labels": ["bug"]}, OPENED, None),
    ({"labels": ["agent"]}, PUSH, "label filter ['agent'] matched none of []"),
    ({"assignee": "OctoCat"}, ISSUE, None),
    ({"assignee": "hubot"}, PULL, None),  # any of the assignees
    ({"assignee": "jdoe"}, ISSUE, "assignee 'jdoe' not among assignees ['octocat']"),
    ({"assignee": "jdoe"}, PUSH, "event has no assignee, required by assignee 'jdoe'"),
    ({"author": "JDoe"}, ISSUE, None),
    ({"author": "octocat"}, ISSUE, "author 'jdoe' is not 'octocat'"),
    ({"author": "x"}, CHECK, "event has no author, required by author 'x'"),
    ({"branches": ["main"]}, PUSH, None),
    ({"branches": ["main"]}, PULL, None),  # the base branch
    ({"branches": ["fix/safari-login"]}, PULL, None),  # the head branch
    ({"branches": ["Main"]}, PUSH, "branch 'main' not in branches ['Main']"),
    (
        {"branches": ["release"]},
        PULL,
        "branch 'fix/safari-login' / base branch 'main' not in branches ['release']",
    ),
    ({"branches": ["main"]}, ISSUE, "event has no branch, required by branches ['main']"),
    ({"conclusions": ["failure", "timed_out"]}, CHECK, None),
    ({"conclusions": ["success"]}, CHECK, "conclusion 'failure' not in conclusions ['success']"),
    (
        {"conclusions": ["failure"]},
        ISSUE,
        "event has no conclusion, required by conclusions ['failure']",
    ),
]


@pytest.mark.parametrize(("filters", "event", "reason"), CASES)
def test_each_filter_field(filters: dict[str, Any], event: Event, reason: str | None) -> None:
    assert mismatch(entry(**filters), event) == reason


def test_every_field_must_pass_and_the_first_failure_is_reported() -> None:
    both = entry(events=["issues"], labels=["agent"], author="jdoe")
    assert mismatch(both, ISSUE) is None
    assert mismatch(entry(events=["issues"], labels=["triage"], author="x"), OPENED) == (
        "label filter ['triage'] matched none of ['bug', 'agent']"
    )
    assert mismatch(entry(events=["push"], labels=["triage"]), ISSUE) == (
        "event 'issues' not in events ['push']"
    )


def test_sentry_linear_and_mintlify_filters() -> None:
    sentry = event_for("issue", repo="widgets-web")
    assert mismatch(entry(resources=["issue", "error"]), sentry) is None
    assert mismatch(entry(resources=["error"]), sentry) == (
        "resource 'issue' not in resources ['error']"
    )
    assert mismatch(entry(projects=["widgets-web"]), sentry) is None
    assert mismatch(entry(projects=["docs"]), sentry) == (
        "project 'widgets-web' not in projects ['docs']"
    )
    linear = event_for("issues", org="org-7f3")
    assert mismatch(entry(organizations=["org-7f3"]), linear) is None
    assert mismatch(entry(organizations=["org-1"]), event_for("issues")) == (
        "event has no organization, required by organizations ['org-1']"
    )


# --- route() over a project on disk -------------------------------------------------

SOURCES = """\
[webhooks.my-github]
type = "github"
credential = "MyOrg"

[webhooks.deploys]
type = "generic"
"""

AGENTS = {
    # Subscribes twice: the second entry matches a labeled issue.
    "triager": """
[[webhooks]]
source = "my-github"
events = ["push"]

[[webhooks]]
source = "my-github"
events = ["issues"]
labels = ["agent"]
""",
    # An entry for another source first: indexes are the agent's own.
    "reviewer": """
[[webhooks]]
source = "deploys"

[[webhooks]]
source = "my-github"
events = ["pull_request"]

[[webhooks]]
source = "my-github"
events = ["issues"]
labels = ["needs-review"]
""",
    "deployer": """
[[webhooks]]
source = "deploys"
""",
    "idle": "",
    "always": """
[[webhooks]]
source = "my-github"
""",
}


def test_route_lists_every_subscribed_agent_with_why(tmp_path: Path) -> None:
    project = write_project(tmp_path, SOURCES, AGENTS)
    assert route(project, ISSUE) == [
        Match("always", True, "matched webhooks[0]"),
        Match(
            "reviewer",
            False,
            "webhooks[1]: event 'issues' not in events ['pull_request']; "
            "webhooks[2]: label filter ['needs-review'] does not have the changed label 'agent'",
        ),
        Match("triager", True, "matched webhooks[1]"),
    ]
    assert route(project, PULL) == [
        Match("always", True, "matched webhooks[0]"),
        Match("reviewer", True, "matched webhooks[1]"),
        Match(
            "triager",
            False,
            "webhooks[0]: event 'pull_request' not in events ['push']; "
            "webhooks[1]: event 'pull_request' not in events ['issues']",
        ),
    ]


def test_route_for_a_source_nobody_uses_or_another_source(tmp_path: Path) -> None:
    project = write_project(tmp_path, SOURCES, AGENTS)
    deploy = event_for("deploy", name="deploys")
    assert route(project, deploy) == [
        Match("deployer", True, "matched webhooks[0]"),
        Match("reviewer", True, "matched webhooks[0]"),
    ]
    assert route(project, event_for("deploy", name="unused")) == []


def test_route_does_not_look_at_scale(tmp_path: Path) -> None:
    agents = {"off": 'scale = 0\n[[webhooks]]\nsource = "my-github"\n'}
    project = write_project(tmp_path, SOURCES, agents)
    assert not project.agents["off"].enabled
    assert route(project, ISSUE) == [Match("off", True, "matched webhooks[0]")]
