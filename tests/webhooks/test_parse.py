"""Deliveries into events: the trigger JSON of each GitHub event, other senders, bad bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.webhooks import (
    MAX_TEXT,
    TRIGGER_KEYS,
    Delivery,
    Event,
    PayloadError,
    parse,
    with_receipt,
)
from tests.webhooks.helpers import (
    GITHUB_EVENTS,
    RECEIVED,
    RECEIVED_TEXT,
    delivery_for,
    fixture_json,
    source,
)
from tests.webhooks.signing import SECRET, sign_generic, sign_github


def github_event(kind: str, body: bytes | None = None) -> Event:
    return parse(source(), delivery_for(kind, body=body))


def github_payload(kind: str, **changes: Any) -> bytes:
    payload = fixture_json(kind)
    payload.update(changes)
    return json.dumps(payload).encode()


def test_issues_gives_the_documented_trigger() -> None:
    event = github_event("issues")
    assert (event.source, event.kind, event.ping) == ("my-github", "issues", False)
    assert event.delivery_id is not None
    assert event.trigger == {
        "source": "github",
        "event": "issues",
        "action": "labeled",
        "repo": "acme/widgets",
        "number": 42,
        "title": "Login button broken on Safari",
        "body": 'Steps to reproduce:\n1. Open the login page in Safari 17\n2. Click "Sign in"'
        "\n\nNothing happens.",
        "url": "https://github.com/acme/widgets/issues/42",
        "author": "jdoe",
        "labels": ["bug", "agent"],
        "sender": "maintainer1",
        "timestamp": RECEIVED_TEXT,  # when it was received, as in Action Llama
        "sourceName": "my-github",
        "org": "acme",
        "branch": None,
        "baseBranch": None,
        "conclusion": None,
        "assignee": "octocat",
        "assignees": ["octocat"],
        "label": "agent",
        "comment": None,
        "commenter": None,
        "channel": None,
    }


def test_issue_comment_is_the_comment_on_its_issue() -> None:
    """``author`` is the issue's author, as in Action Llama; the comment and its
    author are ``comment`` and ``commenter``."""
    event = github_event("issue_comment")
    issue = fixture_json("issue_comment")["issue"]
    assert event.trigger == {
        "source": "github",
        "event": "issue_comment",
        "action": "created",
        "repo": "acme/widgets",
        "number": 42,
        "title": "Login button broken on Safari",
        "body": issue["body"],
        "url": "https://github.com/acme/widgets/issues/42",
        "author": "jdoe",
        "labels": ["bug"],
        "sender": "qa-bot",
        "timestamp": RECEIVED_TEXT,
        "sourceName": "my-github",
        "org": "acme",
        "branch": None,
        "baseBranch": None,
        "conclusion": None,
        "assignee": None,
        "assignees": [],
        "label": None,
        "comment": "Reproduced on Safari 17.3 and 17.4; Chrome is fine.",
        "commenter": "qa-bot",
        "channel": None,
    }


@pytest.mark.parametrize("kind", [*GITHUB_EVENTS, "ping"])
def test_the_documented_keys_come_first_in_order(kind: str) -> None:
    trigger = github_event(kind).trigger
    assert tuple(trigger)[: len(TRIGGER_KEYS)] == TRIGGER_KEYS
    assert "receiptId" not in trigger
    json.dumps(trigger)  # plain JSON values only


def pick(trigger: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: trigger[key] for key in keys}


def test_pull_request_has_both_branches() -> None:
    trigger = github_event("pull_request").trigger
    assert pick(
        trigger, "action", "number", "title", "url", "author", "labels", "branch", "baseBranch"
    ) == {
        "action": "opened",
        "number": 57,
        "title": "Fix Safari login click handler",
        "url": "https://github.com/acme/widgets/pull/57",
        "author": "jdoe",
        "labels": ["needs-review"],
        "branch": "fix/safari-login",
        "baseBranch": "main",
    }
    assert trigger["assignees"] == ["octocat", "hubot"]
    assert trigger["assignee"] == "octocat"
    assert trigger["body"].startswith("Fixes #42.")


def test_pull_request_review_is_the_review_on_its_pull_request() -> None:
    trigger = github_event("pull_request_review").trigger
    assert pick(
        trigger, "action", "number", "title", "url", "author", "comment", "commenter", "branch"
    ) == {
        "action": "submitted",
        "number": 57,
        "title": "Fix Safari login click handler",
        "url": "https://github.com/acme/widgets/pull/57",
        "author": "jdoe",  # the pull request's author, as in Action Llama
        "comment": "Please add a test for the pointer event path.",
        "commenter": "maintainer1",
        "branch": "fix/safari-login",
    }
    assert trigger["body"].startswith("Fixes #42.")


def test_push_is_its_head_commit_on_its_branch() -> None:
    trigger = github_event("push").trigger
    assert pick(
        trigger, "action", "number", "title", "url", "author", "sender", "branch", "timestamp"
    ) == {
        "action": None,
        "number": None,
        "title": "Fix Safari login click handler (#57)",
        "url": "https://github.com/acme/widgets/compare/9049f1265b7d...0d1a26e67d8f",
        "author": "jdoe",
        "sender": "maintainer1",
        "branch": "main",
        "timestamp": RECEIVED_TEXT,
    }
    assert trigger["body"].endswith("Safari fires pointerup without click.")


def test_a_push_that_deletes_a_tag_has_no_branch_and_no_commit() -> None:
    body = github_payload("push", ref="refs/tags/v1.0", deleted=True, head_commit=None)
    trigger = github_event("push", body).trigger
    assert pick(trigger, "branch", "title", "author", "timestamp") == {
        "branch": None,
        "title": None,
        "author": "maintainer1",  # the pusher
        "timestamp": RECEIVED_TEXT,
    }


def test_check_run_has_its_conclusion_branch_and_pull_request() -> None:
    trigger = github_event("check_run").trigger
    assert pick(trigger, "title", "conclusion", "branch", "number", "url", "timestamp") == {
        "title": "test (ubuntu-latest, 3.11)",
        "conclusion": "failure",
        "branch": "fix/safari-login",
        "number": 57,
        "url": "https://github.com/acme/widgets/actions/runs/8100001/job/22000001",
        "timestamp": RECEIVED_TEXT,
    }


def test_workflow_run_has_its_conclusion_and_branch() -> None:
    trigger = github_event("workflow_run").trigger
    assert pick(trigger, "title", "body", "conclusion", "branch", "author", "number") == {
        "title": "CI",
        "body": "Fix Safari login click handler (#57)",
        "conclusion": "success",
        "branch": "main",
        "author": "maintainer1",
        "number": None,
    }


def test_a_workflow_runs_author_is_its_actor_as_in_action_llama() -> None:
    payload = fixture_json("workflow_run")
    payload["workflow_run"]["triggering_actor"] = {"login": "rerunner"}
    trigger = github_event("workflow_run", json.dumps(payload).encode()).trigger
    assert trigger["author"] == "maintainer1"


def test_ping_is_marked() -> None:
    event = github_event("ping")
    assert event.ping and event.kind == "ping"
    assert event.trigger["repo"] == "acme/widgets"


def test_other_github_events_get_the_common_fields() -> None:
    body = json.dumps(
        {
            "action": "published",
            "release": {"tag_name": "v1.0"},
            "repository": {"full_name": "acme/widgets", "owner": {"login": "acme"}},
            "sender": {"login": "jdoe"},
        }
    ).encode()
    event = parse(source(), Delivery("my-github", sign_github(body, SECRET, event="release"), body))
    assert event.kind == "release"
    assert pick(event.trigger, "action", "repo", "sender", "org", "title") == {
        "action": "published",
        "repo": "acme/widgets",
        "sender": "jdoe",
        "org": "acme",
        "title": None,
    }


def test_the_delivery_id_is_github_s() -> None:
    raw = fixture_json("issues")
    body = json.dumps(raw).encode()
    headers = sign_github(body, SECRET, delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    event = parse(source(), Delivery("my-github", headers, body))
    assert event.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_long_text_is_cut_for_the_prompt() -> None:
    issue = fixture_json("issues")["issue"]
    issue["body"] = "x" * (MAX_TEXT + 5)
    trigger = github_event("issues", github_payload("issues", issue=issue)).trigger
    assert trigger["body"] == "x" * MAX_TEXT + "\n[... 5 more characters cut]"


def test_the_receipt_id_goes_where_the_documentation_shows_it() -> None:
    trigger = with_receipt(github_event("issues").trigger, "wh_abc123")
    keys = list(trigger)
    assert keys[: len(TRIGGER_KEYS) + 1] == [*TRIGGER_KEYS, "receiptId"]
    assert trigger["receiptId"] == "wh_abc123"
    assert with_receipt(trigger, "wh_x")["receiptId"] == "wh_x"


# --- bodies that are not what was promised ------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"action": "opened",',
            "the body is not valid JSON: Expecting property name "
            "enclosed in double quotes at line 1 column 21",
        ),
        (b"", "the body is not valid JSON: Expecting value at line 1 column 1"),
        (b"[1, 2]", "the body must be a JSON object, got a list"),
        (b'"issues"', "the body must be a JSON object, got a string"),
        (b"42", "the body must be a JSON object, got a number"),
        (b"null", "the body must be a JSON object, got null"),
        (
            b'{"a": "\xff"}',
            "the body is not UTF-8 text: byte 0xff at offset 7 (invalid start byte)",
        ),
        (b'{"a": NaN}', "the body is not valid JSON: NaN is not a JSON value"),
        (
            b"payload=%7B%7D",
            "the body is not valid JSON: Expecting value at line 1 column 1 "
            "(it is form-encoded: set the webhook's content type to application/json)",
        ),
    ],
)
def test_a_body_that_is_not_a_json_object_is_explained(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        github_event("issues", body)
    assert str(caught.value) == message


def test_pathological_json_is_a_payload_error_not_a_crash() -> None:
    with pytest.raises(PayloadError, match="not usable JSON"):
        github_event("issues", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(PayloadError, match="not usable JSON"):
        github_event("issues", b'{"n": ' + b"9" * 5000 + b"}")


def test_a_body_shaped_wrongly_names_the_field() -> None:
    with pytest.raises(PayloadError) as caught:
        github_event("issues", github_payload("issues", issue="42"))
    assert str(caught.value) == "'issue' must be an object, got a string"
    with pytest.raises(PayloadError) as caught:
        github_event("issues", github_payload("issues", issue=None))
    assert str(caught.value) == "the issues event has no 'issue' object"
    issue = fixture_json("issues")["issue"]
    issue["labels"][1]["name"] = 7
    with pytest.raises(PayloadError) as caught:
        github_event("issues", github_payload("issues", issue=issue))
    assert str(caught.value) == "'issue.labels[1].name' must be a string, got a number"


def test_a_github_delivery_needs_its_event_header() -> None:
    body = fixture_json("issues")
    raw = json.dumps(body).encode()
    headers = sign_github(raw, SECRET)
    del headers["X-GitHub-Event"]
    with pytest.raises(PayloadError, match="no X-GitHub-Event header"):
        parse(source(), Delivery("my-github", headers, raw))


# --- generic senders ----------------------------------------------------------------


def generic_event(payload: object, name: str = "deploys", **table: Any) -> Event:
    body = json.dumps(payload).encode()
    found = source(name, type="generic", **table)
    headers = sign_generic(body, SECRET, delivery_id="d-1", event="deploy", event_header="X-Kind")
    return parse(found, Delivery(name, headers, body))


def test_a_generic_body_carries_the_trigger_keys() -> None:
    event = generic_event(
        {
            "event": "deploy",
            "action": "failed",
            "repo": "acme/widgets",
            "number": 7,
            "title": "Deploy of v1.2 failed",
            "labels": ["prod"],
            "timestamp": "2026-03-25T16:00:00+02:00",
            "conclusion": "failure",
            "assignee": "oncall",
            "extra": {"anything": ["goes"]},
        }
    )
    assert (event.kind, event.delivery_id, event.ping) == ("deploy", "d-1", False)
    assert pick(
        event.trigger, "source", "sourceName", "action", "repo", "number", "labels", "timestamp"
    ) == {
        "source": "generic",
        "sourceName": "deploys",
        "action": "failed",
        "repo": "acme/widgets",
        "number": 7,
        "labels": ["prod"],
        "timestamp": "2026-03-25T14:00:00Z",
    }
    assert event.trigger["assignees"] == ["oncall"]


def test_a_generic_event_name_comes_from_the_header_then_the_body_then_a_default() -> None:
    assert generic_event({"event": "from-body"}, eventHeader="X-Kind").kind == "deploy"
    assert generic_event({"event": "from-body"}).kind == "from-body"
    assert generic_event({"action": "x"}).kind == "event"


def test_a_generic_time_may_be_a_unix_time() -> None:
    assert generic_event({"timestamp": 1774449000}).trigger["timestamp"] == "2026-03-25T14:30:00Z"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"number": "7"}, "'number' must be an integer, got a string"),
        ({"number": True}, "'number' must be an integer, got true"),
        ({"labels": "prod"}, "'labels' must be a list, got a string"),
        ({"labels": ["ok", 3]}, "'labels[1]' must be a string, got a number"),
        ({"event": ["deploy"]}, "'event' must be a string, got a list"),
        (
            {"timestamp": "yesterday"},
            "'timestamp' is not an ISO 8601 time such as 2026-03-24T14:30:00Z",
        ),
    ],
)
def test_a_generic_body_shaped_wrongly_names_the_field(payload: object, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        generic_event(payload)
    assert str(caught.value) == message


def test_generic_delivery_ids_come_from_the_configured_header() -> None:
    body = b"{}"
    found = source("deploys", type="generic", deliveryHeader="X-Request-Id")
    headers = {"X-Request-Id": " r-9 ", "X-Delivery-Id": "ignored"}
    assert parse(found, Delivery("deploys", headers, body)).delivery_id == "r-9"
    assert parse(found, Delivery("deploys", {}, body)).delivery_id is None


# --- Sentry, Linear, Mintlify (best effort) -----------------------------------------


def test_a_sentry_issue_alert() -> None:
    payload = {
        "action": "created",
        "data": {
            "issue": {
                "title": "TypeError: cannot read 'id' of undefined",
                "web_url": "https://acme.sentry.io/issues/4242/",
                "culprit": "login.ts in onClick",
                "project": {"slug": "widgets-web"},
                "assignedTo": {"type": "user", "name": "jdoe"},
            }
        },
        "actor": {"type": "application", "name": "Sentry"},
    }
    body = json.dumps(payload).encode()
    headers = {
        "Sentry-Hook-Resource": "issue",
        "Sentry-Hook-Timestamp": "1774449000",
        "Request-ID": "sentry-req-1",
    }
    delivery = Delivery("my-sentry", headers, body, RECEIVED)
    event = parse(source("my-sentry", type="sentry"), delivery)
    assert (event.kind, event.delivery_id) == ("issue", "sentry-req-1")
    assert pick(event.trigger, "source", "action", "repo", "title", "body", "url", "sender") == {
        "source": "sentry",
        "action": "created",
        "repo": "widgets-web",
        "title": "TypeError: cannot read 'id' of undefined",
        "body": "login.ts in onClick",
        "url": "https://acme.sentry.io/issues/4242/",
        "sender": "Sentry",
    }
    assert event.trigger["timestamp"] == RECEIVED_TEXT  # received, as in Action Llama
    assert event.trigger["assignees"] == ["jdoe"]


def test_a_linear_issue_and_an_odd_one() -> None:
    payload = {
        "action": "create",
        "type": "Issue",
        "organizationId": "org-7f3",
        "webhookTimestamp": 1774449000000,
        "url": "https://linear.app/acme/issue/ENG-12",
        "actor": {"name": "Jane Doe", "email": "jdoe@example.com"},
        "data": {
            "number": 12,
            "title": "Safari login",
            "description": "Broken",
            "labels": [{"name": "Bug"}],
            "assignee": {"name": "Octo Cat", "email": "octo@example.com"},
            "creator": {"email": "jdoe@example.com"},
        },
    }
    linear = source("my-linear", type="linear")
    body = json.dumps(payload).encode()
    event = parse(linear, Delivery("my-linear", {"Linear-Delivery": "ld-1"}, body, RECEIVED))
    assert (event.kind, event.delivery_id) == ("issues", "ld-1")
    assert pick(event.trigger, "action", "number", "title", "body", "labels", "org", "author") == {
        "action": "create",
        "number": 12,
        "title": "Safari login",
        "body": "Broken",
        "labels": ["Bug"],
        "org": "org-7f3",
        "author": "jdoe@example.com",
    }
    assert event.trigger["timestamp"] == RECEIVED_TEXT
    odd = json.dumps({"type": "Project", "data": "unexpected", "actor": 3}).encode()
    event = parse(linear, Delivery("my-linear", {}, odd))
    assert (event.kind, event.trigger["title"], event.trigger["sender"]) == ("project", None, None)


def test_a_linear_comment_is_by_its_issues_creator_as_in_action_llama() -> None:
    payload = {
        "action": "create",
        "type": "Comment",
        "organizationId": "org-7f3",
        "data": {
            "body": "Still broken on 17.4",
            "user": {"email": "qa@example.com"},
            "issue": {
                "number": 12,
                "title": "Safari login",
                "description": "Broken",
                "creator": {"email": "jdoe@example.com"},
            },
        },
    }
    linear = source("my-linear", type="linear")
    event = parse(linear, Delivery("my-linear", {}, json.dumps(payload).encode(), RECEIVED))
    assert event.kind == "issue_comment"
    assert pick(event.trigger, "number", "body", "author", "comment", "commenter") == {
        "number": 12,
        "body": "Broken",
        "author": "jdoe@example.com",
        "comment": "Still broken on 17.4",
        "commenter": "qa@example.com",
    }


def test_a_mintlify_build() -> None:
    payload = {"event": "build", "status": "failed", "project": "acme-docs", "branch": "main"}
    body = json.dumps(payload).encode()
    event = parse(source("docs", type="mintlify"), Delivery("docs", {}, body))
    assert event.kind == "build"
    assert pick(event.trigger, "action", "repo", "branch", "conclusion") == {
        "action": "failed",
        "repo": "acme-docs",
        "branch": "main",
        "conclusion": "failure",
    }


# --- properties ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
# Bodies shaped like the payloads the readers walk, with any value in any place.
shaped = st.fixed_dictionaries(
    {},
    optional={
        key: json_values
        for key in (
            "action",
            "issue",
            "comment",
            "pull_request",
            "review",
            "repository",
            "sender",
            "organization",
            "ref",
            "head_commit",
            "pusher",
            "check_run",
            "check_suite",
            "workflow_run",
            "data",
            "actor",
            "type",
            "event",
            "labels",
            "number",
            "timestamp",
            "assignee",
            "assignees",
            "label",
            "hook",
            "webhookTimestamp",
            "status",
            "user",
        )
    },
)
kinds = st.sampled_from(["github", "generic", "sentry", "linear", "mintlify"])
events = st.sampled_from([*GITHUB_EVENTS, "ping", "check_suite", "release", "issue", "error"])


@settings(max_examples=400, deadline=None)
@given(payload=shaped, kind=kinds, event=events)
def test_parse_reads_any_shape_or_says_what_is_wrong(
    payload: dict[str, Any], kind: str, event: str
) -> None:
    body = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "Sentry-Hook-Resource": event, "Sentry-Hook-Timestamp": "x"}
    try:
        found = parse(source("s", type=kind), Delivery("s", headers, body))
    except PayloadError as exc:
        assert str(exc)
        assert kind in ("github", "generic")  # the best-effort readers never refuse a shape
    else:
        assert tuple(found.trigger)[: len(TRIGGER_KEYS)] == TRIGGER_KEYS
        json.dumps(found.trigger, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), kind=kinds)
def test_parse_never_fails_but_with_a_payload_error(body: bytes, kind: str) -> None:
    try:
        parse(source("s", type=kind), Delivery("s", {"X-GitHub-Event": "issues"}, body))
    except PayloadError:
        pass
