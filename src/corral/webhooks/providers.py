"""Deliveries from senders other than GitHub into trigger fields.

``generic``: the body carries the trigger's own keys (``action``, ``repo``,
``title``, ...), read strictly, since the user controls the sender and is best
served by an error naming the field. Sentry, Linear and Mintlify are read
best-effort from their documented payloads: what is missing or shaped otherwise
is left ``null``.
"""

from __future__ import annotations

from corral.webhooks._json import Node
from corral.webhooks._trigger import Fields

__all__ = ["generic_fields", "linear_event", "linear_fields", "mintlify_fields", "sentry_fields"]


def generic_fields(body: Node) -> Fields:
    """The trigger keys, as the trigger JSON spells them, from the top of the body."""
    assignees = body.names("assignees")
    single = body.text("assignee")
    if single and single not in assignees:
        assignees.insert(0, single)
    return Fields(
        action=body.text("action"),
        repo=body.text("repo"),
        number=body.integer("number"),
        title=body.text("title"),
        body=body.text("body"),
        url=body.text("url"),
        author=body.text("author"),
        labels=body.names("labels"),
        sender=body.text("sender"),
        timestamp=body.time("timestamp"),
        org=body.text("org"),
        branch=body.text("branch"),
        base_branch=body.text("baseBranch"),
        conclusion=body.text("conclusion"),
        assignees=assignees,
    )


# Sentry names the resource in Sentry-Hook-Resource; its object sits under data.<key>.
_SENTRY_OBJECT = {"event_alert": "event", "metric_alert": "metric_alert", "error": "error"}


def sentry_fields(resource: str, body: Node) -> Fields:
    """Sentry integration webhooks: ``repo`` is the Sentry project's slug."""
    data = body.obj("data") or Node({}, "data", strict=False)
    item = data.obj(_SENTRY_OBJECT.get(resource, "issue")) or Node({}, "data", strict=False)
    project = item.obj("project")
    assigned = item.obj("assignedTo")
    comment = data.text("comment")
    return Fields(
        action=body.text("action"),
        repo=(project.text("slug") if project else None) or data.text("project_slug"),
        title=item.text("title"),
        body=comment if resource == "comment" else item.text("message") or item.text("culprit"),
        url=item.text("web_url") or item.text("url"),
        sender=body.login("actor", "name"),
        assignees=[name for name in [assigned.text("name") if assigned else None] if name],
    )


def linear_event(body: Node) -> str | None:
    """Linear's ``type`` as an event name: ``Issue`` -> ``issues``, ``Comment`` ->
    ``issue_comment`` (as Action Llama names them), others lower-cased."""
    kind = body.text("type")
    if not kind:
        return None
    return {"Issue": "issues", "Comment": "issue_comment"}.get(kind, kind.lower())


def linear_fields(body: Node) -> Fields:
    """Linear webhooks: ``org`` is the organization id (the ``organizations`` filter)."""
    data = body.obj("data") or Node({}, "data", strict=False)
    is_comment = body.text("type") == "Comment"
    issue = (data.obj("issue") or Node({}, "data.issue", strict=False)) if is_comment else data
    assignee = _person(issue.obj("assignee"))
    return Fields(
        action=body.text("action"),
        number=issue.integer("number"),
        title=issue.text("title"),
        body=issue.text("description"),
        url=body.text("url") or data.text("url"),
        # The issue's creator, on a comment too (as Action Llama's author filter reads it).
        author=_person(issue.obj("creator")),
        labels=issue.names("labels", "name"),
        sender=_person(body.obj("actor")),
        org=body.text("organizationId"),
        assignees=[assignee] if assignee else [],
        comment=data.text("body") if is_comment else None,
        commenter=_person(data.obj("user")) if is_comment else None,
    )


def _person(node: Node | None) -> str | None:
    if node is None:
        return None
    return node.text("email") or node.text("name")


_CONCLUSIONS = {
    "failed": "failure",
    "failure": "failure",
    "succeeded": "success",
    "success": "success",
}


def mintlify_fields(body: Node) -> Fields:
    """Mintlify build webhooks: ``repo`` is the Mintlify project."""
    action = body.text("action") or body.text("status")
    return Fields(
        action=action,
        repo=body.text("project"),
        title=body.text("title"),
        body=body.text("message") or body.text("error"),
        url=body.text("url"),
        sender=body.login("user", "email"),
        branch=body.text("branch"),
        conclusion=_CONCLUSIONS.get(action or ""),
    )
