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


COMMENT = github("issue_comment")  # qa-bot comments on jdoe's issue, labelled bug
REVIEW = github("pull_request_review")


# One case per filter field, with Action Llama's meaning: (filters, event, None when it
# matches else the reason).
CASES: list[tuple[dict[str, Any], Event, str | None]] = [
    ({"events": ["issues", "push"]}, ISSUE, None),
    ({"events": ["push"]}, ISSUE, "event 'issues' not in events ['push']"),
    ({"actions": ["opened", "labeled"]}, ISSUE, None),
    ({"actions": ["closed"]}, ISSUE, "action 'labeled' not in actions ['closed']"),
    ({"actions": ["opened"]}, PUSH, "event has no action, required by actions ['opened']"),
    ({"repos": ["acme/widgets"]}, ISSUE, None),
    ({"repos": ["acme/api"]}, ISSUE, "repo 'acme/widgets' not in repos ['acme/api']"),
    ({"orgs": ["other", "acme"]}, ISSUE, None),
    ({"org": "acme"}, PUSH, None),
    ({"orgs": ["other"]}, ISSUE, "org 'acme' not in orgs ['other']"),
    ({"org": "other", "orgs": ["else"]}, PUSH, "org 'acme' not in orgs ['else', 'other']"),
    ({"labels": ["agent", "triage"]}, ISSUE, None),
    ({"labels": ["triage"]}, OPENED, "label filter ['triage'] matched none of ['bug', 'agent']"),
    ({"labels": ["bug"]}, OPENED, None),
    ({"labels": ["agent"]}, PUSH, "label filter ['agent'] matched none of []"),
    ({"assignee": "octocat"}, ISSUE, None),
    ({"assignee": "octocat"}, PULL, None),  # the first assignee
    ({"assignee": "jdoe"}, ISSUE, "assignee 'octocat' is not 'jdoe'"),
    ({"assignee": "jdoe"}, PUSH, "event has no assignee, required by assignee 'jdoe'"),
    ({"author": "jdoe"}, ISSUE, None),
    ({"author": "octocat"}, ISSUE, "author 'jdoe' is not 'octocat'"),
    ({"author": "x"}, CHECK, "event has no author, required by author 'x'"),
    ({"branches": ["main"]}, PUSH, None),
    ({"branches": ["fix/safari-login"]}, PULL, None),  # the head branch
    ({"branches": ["main"]}, CHECK, "branch 'fix/safari-login' not in branches ['main']"),
    ({"conclusions": ["failure", "timed_out"]}, CHECK, None),
    ({"conclusions": ["success"]}, CHECK, "conclusion 'failure' not in conclusions ['success']"),
]


@pytest.mark.parametrize(("filters", "event", "reason"), CASES)
def test_each_filter_field(filters: dict[str, Any], event: Event, reason: str | None) -> None:
    assert mismatch(entry(**filters), event) == reason


# --- each way corral's filters used to differ from Action Llama's ----------------------


def test_labels_pass_on_the_labels_the_issue_has_not_only_the_one_just_added() -> None:
    """Adding ``agent`` to an issue already labelled ``bug`` passes ``labels = ["bug"]``
    (corral used to look at the added label only)."""
    assert ISSUE.trigger["action"] == "labeled" and ISSUE.trigger["label"] == "agent"
    assert mismatch(entry(labels=["bug"]), ISSUE) is None
    assert mismatch(entry(actions=["labeled"], labels=["bug"]), ISSUE) is None


def test_label_match_changed_keeps_the_added_label_only_as_an_option() -> None:
    """``labelMatch = "changed"``: a labeled event passes on the label it added, so an
    agent started when ``bug`` was added is not started again when ``agent`` is."""
    changed = entry(labels=["bug"], labelMatch="changed")
    assert mismatch(changed, ISSUE) == (
        "label filter ['bug'] does not have the changed label 'agent' (labelMatch = \"changed\")"
    )
    assert mismatch(entry(labels=["agent"], labelMatch="changed"), ISSUE) is None
    # Events that change no label are matched on the labels the issue has, either way.
    assert mismatch(changed, OPENED) is None


def test_author_on_a_comment_or_review_is_the_author_of_the_issue_or_pull_request() -> None:
    assert (COMMENT.trigger["author"], COMMENT.trigger["commenter"]) == ("jdoe", "qa-bot")
    assert mismatch(entry(author="jdoe"), COMMENT) is None
    assert mismatch(entry(author="qa-bot"), COMMENT) == "author 'jdoe' is not 'qa-bot'"
    assert mismatch(entry(author="jdoe"), REVIEW) is None


def test_branches_and_conclusions_let_an_event_without_one_through() -> None:
    """``branches = ["main"]`` still takes issues; ``conclusions`` still takes pushes."""
    assert mismatch(entry(branches=["main"]), ISSUE) is None
    assert mismatch(entry(events=["issues", "push"], branches=["main"]), OPENED) is None
    assert mismatch(entry(conclusions=["failure"]), ISSUE) is None
    assert mismatch(entry(conclusions=["failure"]), PUSH) is None
    # Other filters on something the event lacks still fail.
    assert mismatch(entry(actions=["opened"]), PUSH) is not None
    assert mismatch(entry(labels=["bug"]), PUSH) is not None


def test_a_pull_request_branch_is_its_head_branch() -> None:
    """A pull request from ``fix/safari-login`` into ``main`` is on ``fix/safari-login``;
    its base is in the trigger's ``baseBranch`` but not matched."""
    assert PULL.trigger["baseBranch"] == "main"
    assert mismatch(entry(branches=["main"]), PULL) == (
        "branch 'fix/safari-login' not in branches ['main']"
    )


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        ({"events": ["Issues"]}, "event 'issues' not in events ['Issues']"),
        ({"repos": ["ACME/Widgets"]}, "repo 'acme/widgets' not in repos ['ACME/Widgets']"),
        ({"orgs": ["Acme"]}, "org 'acme' not in orgs ['Acme']"),
        ({"labels": ["Agent"]}, "label filter ['Agent'] matched none of ['bug', 'agent']"),
        ({"author": "JDoe"}, "author 'jdoe' is not 'JDoe'"),
        ({"assignee": "OctoCat"}, "assignee 'octocat' is not 'OctoCat'"),
    ],
)
def test_names_are_compared_exactly(filters: dict[str, Any], reason: str) -> None:
    assert mismatch(entry(**filters), ISSUE) == reason


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
            "webhooks[2]: label filter ['needs-review'] matched none of ['bug', 'agent']",
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
