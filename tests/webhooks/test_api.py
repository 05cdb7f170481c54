"""The webhook core's public names: the intake, CLI and benchmark are built on these."""

from __future__ import annotations

import dataclasses

import corral.webhooks
from corral.webhooks import Delivery, Event, Match, Verification


def test_exports() -> None:
    assert sorted(corral.webhooks.__all__) == [
        "DEFAULT_EVENT",
        "Delivery",
        "Event",
        "MAX_TEXT",
        "Match",
        "PayloadError",
        "TRIGGER_KEYS",
        "Verification",
        "mismatch",
        "parse",
        "route",
        "signing_credential",
        "signing_kind",
        "signing_secret",
        "verify",
        "with_receipt",
    ]
    assert issubclass(corral.webhooks.PayloadError, ValueError)


def test_records_are_frozen_with_the_documented_fields() -> None:
    fields = {
        Delivery: ["source", "headers", "body", "received"],
        Verification: ["ok", "detail", "signed"],
        Event: ["source", "kind", "delivery_id", "ping", "trigger", "reply"],
        Match: ["agent", "matched", "reason"],
    }
    for record, names in fields.items():
        assert [f.name for f in dataclasses.fields(record)] == names
        assert record.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert hasattr(record, "__slots__")


def test_a_delivery_keeps_header_names_lower_cased() -> None:
    delivery = Delivery("s", {"X-GitHub-Event": "issues", "content-type": "x"}, b"{}")
    assert dict(delivery.headers) == {"x-github-event": "issues", "content-type": "x"}
    assert delivery.header("X-GITHUB-EVENT") == "issues"
    assert delivery.header("X-Missing") is None
