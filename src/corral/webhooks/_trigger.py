"""The trigger JSON an agent sees in ``<webhook-trigger>``, built in one documented order.

The documented keys come first, in the documented order, and are always present
(``null`` or ``[]`` when the event has no such thing), so a skill can rely on the
shape; corral's additions follow. ``receiptId`` is added by the intake once the
delivery is recorded (:func:`with_receipt` puts it where the documentation shows it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.webhooks._json import clip

__all__ = ["TRIGGER_KEYS", "Fields", "trigger_json", "with_receipt"]

#: The keys of the documented trigger JSON, in order (``receiptId`` comes after them).
TRIGGER_KEYS = (
    "source",
    "event",
    "action",
    "repo",
    "number",
    "title",
    "body",
    "url",
    "author",
    "labels",
    "sender",
    "timestamp",
)


@dataclass
class Fields:
    """What a normaliser read from a payload; everything is optional."""

    action: str | None = None
    repo: str | None = None
    number: int | None = None
    title: str | None = None
    body: str | None = None
    url: str | None = None
    author: str | None = None
    labels: list[str] = field(default_factory=list)
    sender: str | None = None
    timestamp: str | None = None
    #: The organization (GitHub: the payload's ``organization``, else the repo's owner).
    org: str | None = None
    #: Push: the pushed branch; pull request: its head branch; runs and checks: head_branch.
    branch: str | None = None
    #: Pull requests: the branch it merges into.
    base_branch: str | None = None
    conclusion: str | None = None
    assignees: list[str] = field(default_factory=list)
    #: GitHub ``labeled`` / ``unlabeled``: the label added or removed.
    label: str | None = None
    #: A comment's or review's text, and who wrote it (``body`` and ``author`` stay the
    #: issue's or pull request's, as in Action Llama).
    comment: str | None = None
    commenter: str | None = None
    #: Slack and Discord: the channel id.
    channel: str | None = None


def trigger_json(
    source_type: str, source_name: str, kind: str, fields: Fields, received: str
) -> dict[str, Any]:
    """The trigger for an event of ``kind`` from the source ``source_name``.

    ``source`` is the source's type (``"github"``), as in Action Llama's payloads;
    ``sourceName`` is the ``[webhooks.NAME]`` it came through. ``timestamp`` is the
    time the delivery was received (``received``) unless the reader set one.
    """
    return {
        "source": source_type,
        "event": kind,
        "action": fields.action,
        "repo": fields.repo,
        "number": fields.number,
        "title": clip(fields.title),
        "body": clip(fields.body),
        "url": fields.url,
        "author": fields.author,
        "labels": list(fields.labels),
        "sender": fields.sender,
        "timestamp": fields.timestamp or received,
        "sourceName": source_name,
        "org": fields.org,
        "branch": fields.branch,
        "baseBranch": fields.base_branch,
        "conclusion": fields.conclusion,
        "assignee": fields.assignees[0] if fields.assignees else None,
        "assignees": list(fields.assignees),
        "label": fields.label,
        "comment": clip(fields.comment),
        "commenter": fields.commenter,
        "channel": fields.channel,
    }


def with_receipt(trigger: dict[str, Any], receipt_id: str) -> dict[str, Any]:
    """A copy of ``trigger`` with ``receiptId`` after ``timestamp``, as documented."""
    out: dict[str, Any] = {}
    for key, value in trigger.items():
        if key != "receiptId":
            out[key] = value
        if key == "timestamp":
            out["receiptId"] = receipt_id
    out.setdefault("receiptId", receipt_id)
    return out
