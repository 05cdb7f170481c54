"""GitHub deliveries into trigger fields.

The event is named by ``X-GitHub-Event``. The events agents act on are read in
full; any other event gets the fields every GitHub payload shares (action,
repository, sender, organization). A comment or review keeps the issue's or pull
request's number, title, text and author (``author`` is the issue's author, as in
Action Llama) and adds its own text and author as ``comment`` and ``commenter``.
The trigger's ``timestamp`` is the time the delivery was received, as in Action Llama.
"""

from __future__ import annotations

from collections.abc import Callable

from corral.webhooks._json import Node, PayloadError
from corral.webhooks._trigger import Fields

__all__ = ["EVENTS", "github_fields"]

Reader = Callable[[Node, Fields], None]


def github_fields(kind: str, payload: Node) -> Fields:
    """The trigger fields of a GitHub ``kind`` event (``X-GitHub-Event``)."""
    fields = _common(payload)
    reader = EVENTS.get(kind)
    if reader is not None:
        reader(payload, fields)
    return fields


def _common(payload: Node) -> Fields:
    repository = payload.obj("repository")
    repo = repository.text("full_name") if repository else None
    owner = repository.login("owner") if repository else None
    return Fields(
        action=payload.text("action"),
        repo=repo,
        sender=payload.login("sender"),
        org=payload.login("organization") or owner,
    )


def _issue_like(item: Node, fields: Fields) -> None:
    """An issue or a pull request: they share these fields."""
    fields.number = item.integer("number")
    fields.title = item.text("title")
    fields.body = item.text("body")
    fields.url = item.text("html_url")
    fields.author = item.login("user")
    fields.labels = item.names("labels", "name")
    fields.assignees = item.names("assignees", "login")
    single = item.login("assignee")
    if single and single not in fields.assignees:
        fields.assignees.insert(0, single)


def _label(payload: Node) -> str | None:
    """The label a ``labeled`` / ``unlabeled`` action added or removed."""
    label = payload.obj("label")
    return label.text("name") if label else None


def _branches(pull: Node, fields: Fields) -> None:
    head, base = pull.obj("head"), pull.obj("base")
    fields.branch = head.text("ref") if head else None
    fields.base_branch = base.text("ref") if base else None


def _issues(payload: Node, fields: Fields) -> None:
    _issue_like(payload.need("issue", "issues"), fields)
    fields.label = _label(payload)


def _issue_comment(payload: Node, fields: Fields) -> None:
    _issue_like(payload.need("issue", "issue_comment"), fields)
    _said(payload.need("comment", "issue_comment"), fields)


def _said(remark: Node, fields: Fields) -> None:
    """A comment or review: its text and author go in ``comment`` and ``commenter``;
    ``body`` and ``author`` stay the issue's (Action Llama's ``author`` filter checks
    the issue's author on a comment)."""
    fields.comment = remark.text("body")
    fields.commenter = remark.login("user")


def _pull_request(payload: Node, fields: Fields) -> None:
    pull = payload.need("pull_request", "pull_request")
    _issue_like(pull, fields)
    _branches(pull, fields)
    fields.label = _label(payload)


def _pull_request_review(payload: Node, fields: Fields) -> None:
    pull = payload.need("pull_request", "pull_request_review")
    _issue_like(pull, fields)
    _branches(pull, fields)
    _said(payload.need("review", "pull_request_review"), fields)


def _push(payload: Node, fields: Fields) -> None:
    ref = payload.text("ref") or ""
    fields.branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    fields.url = payload.text("compare")
    commit = payload.obj("head_commit")  # null when a branch is deleted
    pusher = payload.obj("pusher")
    fields.author = pusher.text("name") if pusher else None
    if commit is not None:
        message = commit.text("message") or ""
        fields.title = message.split("\n", 1)[0] or None
        fields.body = message or None
        fields.author = commit.login("author", "username") or fields.author


def _first_pull_number(item: Node) -> int | None:
    pulls = item.data.get("pull_requests")
    if isinstance(pulls, list) and pulls and isinstance(pulls[0], dict):
        return Node(pulls[0], f"{item.path}.pull_requests[0]", item.strict).integer("number")
    return None


def _check_run(payload: Node, fields: Fields) -> None:
    run = payload.need("check_run", "check_run")
    suite = run.obj("check_suite")
    output = run.obj("output")
    fields.title = run.text("name")
    fields.body = output.text("summary") if output else None
    fields.url = run.text("html_url")
    fields.conclusion = run.text("conclusion")
    fields.branch = suite.text("head_branch") if suite else None
    fields.number = _first_pull_number(run)


def _check_suite(payload: Node, fields: Fields) -> None:
    suite = payload.need("check_suite", "check_suite")
    app = suite.obj("app")
    fields.title = app.text("name") if app else None
    fields.conclusion = suite.text("conclusion")
    fields.branch = suite.text("head_branch")
    fields.number = _first_pull_number(suite)


def _workflow_run(payload: Node, fields: Fields) -> None:
    run = payload.need("workflow_run", "workflow_run")
    fields.title = run.text("name")
    fields.body = run.text("display_title")
    fields.url = run.text("html_url")
    fields.conclusion = run.text("conclusion")
    fields.branch = run.text("head_branch")
    fields.author = run.login("actor")  # who ran it, as Action Llama reads it
    fields.number = _first_pull_number(run)


def _ping(payload: Node, fields: Fields) -> None:
    fields.body = payload.text("zen")


#: The GitHub events read in full; others get the common fields only.
EVENTS: dict[str, Reader] = {
    "issues": _issues,
    "issue_comment": _issue_comment,
    "pull_request": _pull_request,
    "pull_request_review": _pull_request_review,
    "push": _push,
    "check_run": _check_run,
    "check_suite": _check_suite,
    "workflow_run": _workflow_run,
    "ping": _ping,
}


def github_event(header: str | None) -> str:
    """The event name from ``X-GitHub-Event``, which every GitHub delivery carries."""
    kind = (header or "").strip()
    if not kind:
        raise PayloadError(
            "no X-GitHub-Event header: GitHub names the event there (was this sent by "
            'GitHub? for another sender use a source with type = "generic")'
        )
    return kind
